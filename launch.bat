@echo off
rem FluxLoRA launcher for Windows (plain cmd, no PowerShell needed).
rem   launch.bat [fluxlora gui options]   set up .venv if needed, then open the GUI
rem   launch.bat test [pytest options]    set up .venv the same way, then run the test suite
rem Environment:
rem   FLUXLORA_TORCH_INDEX  PyTorch wheel index (default https://download.pytorch.org/whl/cu128: CUDA 12.8,
rem                         which RTX 50-series cards need; cu126 for GTX 10-series and older cards)
rem   FLUXLORA_TORCH        pip requirement for torch (default: the pinned version below, built for that index)
rem Torch comes from the PyTorch index only: PyPI's Windows torch is a CPU-only build.
rem Keep parenthesised blocks free of %VAR% that change inside them, and quote anything with > < & ( ).
setlocal EnableExtensions DisableDelayedExpansion
cd /d "%~dp0"
set "ROOT=%CD%"
set "VENV=%ROOT%\.venv"
set "PY=%VENV%\Scripts\python.exe"
set "TORCH_VERSION=2.9.1"

set "MODE=gui"
set "ARGS="
set "PORT=7860"
set "HOST=127.0.0.1"
if /I "%~1"=="test" (
    set "MODE=test"
    shift
)
:collect_args
if "%~1"=="" goto args_done
if "%~1"=="--server_port" set "PORT=%~2"
if "%~1"=="--listen" set "HOST=%~2"
set ARGS=%ARGS% %1
shift
goto collect_args
:args_done

if exist "%PY%" goto have_venv
call :find_python
if not defined BASEPY goto no_python
echo [fluxlora] creating "%VENV%" with Python %BASEPY_VERSION% (%BASEPY%)
%BASEPY% -m venv "%VENV%"
if errorlevel 1 goto venv_failed
if not exist "%PY%" goto venv_failed
:have_venv

if not defined FLUXLORA_TORCH_INDEX set "FLUXLORA_TORCH_INDEX=https://download.pytorch.org/whl/cu128"
rem The build tag is the index's last part (cu128); pinning "+cu128" keeps a CPU wheel from winning.
for %%I in ("%FLUXLORA_TORCH_INDEX%") do set "TORCH_TAG=%%~nxI"
if not defined FLUXLORA_TORCH set "FLUXLORA_TORCH=torch==%TORCH_VERSION%+%TORCH_TAG%"
set "EXTRAS="
if "%MODE%"=="test" set "EXTRAS=[test]"
set "STAMP=%VENV%\.fluxlora-install-%MODE%"
rem Reinstall when pyproject.toml (its time and size) or the torch choice changed since the last install.
for %%F in ("%ROOT%\pyproject.toml") do set "WANT=%%~tF %%~zF %FLUXLORA_TORCH% %FLUXLORA_TORCH_INDEX%"
rem The stamp spells > and < as gt and lt, so that echo can write it and set /p read it back.
set "WANT=%WANT:>=gt%"
set "WANT=%WANT:<=lt%"
set "HAVE="
if exist "%STAMP%" set /p HAVE=<"%STAMP%"
if "%HAVE%"=="%WANT%" goto installed

echo [fluxlora] installing "%FLUXLORA_TORCH%" from "%FLUXLORA_TORCH_INDEX%"
"%PY%" -m pip install --quiet --upgrade pip
if errorlevel 1 goto pip_failed
"%PY%" -m pip install --quiet "%FLUXLORA_TORCH%" --index-url "%FLUXLORA_TORCH_INDEX%"
if errorlevel 1 goto torch_failed
echo [fluxlora] installing FluxLoRA%EXTRAS% and its dependencies
rem The constraint keeps that torch: a dependency asking for another would otherwise fetch PyPI's CPU build.
<nul set /p "=%FLUXLORA_TORCH%" >"%VENV%\torch-constraint.txt"
"%PY%" -m pip install --quiet -e ".%EXTRAS%" --constraint "%VENV%\torch-constraint.txt"
if errorlevel 1 goto pip_failed
>"%STAMP%" echo %WANT%
echo [fluxlora] checking that this torch can use your GPU
"%PY%" -m engine.gpu_check
if errorlevel 1 call :gpu_warning
:installed

if "%MODE%"=="test" goto run_tests

nvidia-smi -L >nul 2>&1
if errorlevel 1 (
    echo [fluxlora] WARNING: no NVIDIA driver found ^(nvidia-smi missing^). Training will run on the CPU, very slowly.
    echo [fluxlora] Install the NVIDIA driver for your card to train on the GPU.
)
echo [fluxlora] starting the GUI at http://%HOST%:%PORT% (close this window to stop it)
"%PY%" -m engine gui --inbrowser %ARGS%
if errorlevel 1 goto gui_failed
exit /b 0

:run_tests
echo [fluxlora] running the test suite
"%PY%" -m pytest %ARGS%
rem Outside any parenthesised block, so this is pytest's exit code, not the one before it ran.
exit /b %ERRORLEVEL%

rem ---- finding Python ---------------------------------------------------------------------
:find_python
rem Sets BASEPY (a command) and BASEPY_VERSION to a 64-bit Python 3.10-3.12; REJECTED lists the others.
set "BASEPY="
set "REJECTED="
for %%C in ("py -3.12" "py -3.11" "py -3.10" "py -3" "python") do (
    if not defined BASEPY call :probe %%~C
)
exit /b 0

:probe
set "MAJOR="
set "MINOR="
set "BITS="
rem The marker word keeps other output (py.exe's "No suitable Python runtime found") from counting.
for /f "tokens=1-4" %%A in ('%* -c "import sys, struct; print('fluxlora-python', sys.version_info[0], sys.version_info[1], struct.calcsize('P') * 8)" 2^>nul') do (
    if "%%A"=="fluxlora-python" (
        set "MAJOR=%%B"
        set "MINOR=%%C"
        set "BITS=%%D"
    )
)
if not defined BITS exit /b 1
set "FOUND=Python %MAJOR%.%MINOR% %BITS%-bit [%*]"
if not "%MAJOR%"=="3" goto probe_rejected
if "%MINOR%"=="10" goto probe_version_ok
if "%MINOR%"=="11" goto probe_version_ok
if "%MINOR%"=="12" goto probe_version_ok
goto probe_rejected
:probe_version_ok
if not "%BITS%"=="64" goto probe_rejected
set "BASEPY=%*"
set "BASEPY_VERSION=%MAJOR%.%MINOR%"
exit /b 0
:probe_rejected
if defined REJECTED (set "REJECTED=%REJECTED%, %FOUND%") else set "REJECTED=%FOUND%"
exit /b 1

rem ---- failures ---------------------------------------------------------------------------
:no_python
rem Not inside a block: REJECTED may hold characters that a block would misread.
if not defined REJECTED echo [fluxlora] ERROR: Python 3.10, 3.11 or 3.12 is needed and none was found.
if defined REJECTED echo [fluxlora] ERROR: found %REJECTED%; FluxLoRA needs a 64-bit Python 3.10, 3.11 or 3.12.
echo [fluxlora] Install Python 3.11 ^(64-bit, "Windows installer (64-bit)"^) from python.org, tick "Add python.exe to PATH", then run launch.bat again.
pause
exit /b 1

:venv_failed
echo [fluxlora] ERROR: could not create "%VENV%" with %BASEPY%.
if exist "%VENV%" rmdir /s /q "%VENV%"
pause
exit /b 1

:torch_failed
echo [fluxlora] ERROR: could not install "%FLUXLORA_TORCH%" from "%FLUXLORA_TORCH_INDEX%".
echo [fluxlora] Check your internet connection. For another CUDA version set FLUXLORA_TORCH_INDEX, e.g.
echo [fluxlora]   set FLUXLORA_TORCH_INDEX=https://download.pytorch.org/whl/cu126
pause
exit /b 1

:pip_failed
echo [fluxlora] ERROR: could not install FluxLoRA's dependencies; see the pip messages above.
pause
exit /b 1

:gui_failed
echo [fluxlora] ERROR: the GUI stopped with an error; the message is above.
pause
exit /b 1

:gpu_warning
echo [fluxlora] WARNING: training would run on the CPU, very slowly; what to do is written above.
echo [fluxlora] After changing FLUXLORA_TORCH_INDEX, run launch.bat again: it reinstalls torch.
exit /b 0
