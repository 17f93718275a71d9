@echo off
rem FluxLoRA launcher for Windows (plain cmd, no PowerShell needed).
rem   launch.bat [fluxlora gui options]   set up .venv if needed, then open the GUI
rem   launch.bat test [pytest options]    set up .venv the same way, then run the test suite
rem Environment: FLUXLORA_TORCH (pip requirement for torch), FLUXLORA_TORCH_INDEX (wheel index;
rem default: PyTorch's CUDA 12.8 index, because PyPI's Windows torch is CPU-only).
setlocal EnableExtensions
cd /d "%~dp0"
set "ROOT=%CD%"
set "VENV=%ROOT%\.venv"
set "PY=%VENV%\Scripts\python.exe"

set "MODE=gui"
set "ARGS="
if /I "%~1"=="test" (
    set "MODE=test"
    shift
)
:collect_args
if "%~1"=="" goto args_done
set ARGS=%ARGS% %1
shift
goto collect_args
:args_done

if exist "%PY%" goto have_venv
set "BASEPY="
for %%V in (3.12 3.11 3.10) do (
    if not defined BASEPY (
        py -%%V -c "import sys" >nul 2>&1 && set "BASEPY=py -%%V"
    )
)
if not defined BASEPY (
    python -c "import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)" >nul 2>&1 && set "BASEPY=python"
)
if not defined BASEPY (
    echo [fluxlora] ERROR: Python 3.10, 3.11 or 3.12 is needed and none was found.
    echo [fluxlora] Install Python 3.11 from python.org, tick "Add python.exe to PATH", then run launch.bat again.
    pause
    exit /b 1
)
echo [fluxlora] creating "%VENV%" with %BASEPY%
%BASEPY% -m venv "%VENV%"
if errorlevel 1 (
    echo [fluxlora] ERROR: could not create "%VENV%".
    pause
    exit /b 1
)
:have_venv

if not defined FLUXLORA_TORCH set "FLUXLORA_TORCH=torch>=2.5"
if not defined FLUXLORA_TORCH_INDEX set "FLUXLORA_TORCH_INDEX=https://download.pytorch.org/whl/cu128"
set "EXTRAS="
if "%MODE%"=="test" set "EXTRAS=[test]"
set "STAMP=%VENV%\.fluxlora-install-%MODE%"
rem Reinstall when pyproject.toml changed since the last install (its time and size).
for %%F in ("%ROOT%\pyproject.toml") do set "WANT=%%~tF %%~zF"
set "HAVE="
if exist "%STAMP%" set /p HAVE=<"%STAMP%"
if "%HAVE%"=="%WANT%" goto installed

echo [fluxlora] installing %FLUXLORA_TORCH% (CUDA build from %FLUXLORA_TORCH_INDEX%)
"%PY%" -m pip install --quiet --upgrade pip
"%PY%" -m pip install --quiet "%FLUXLORA_TORCH%" --index-url "%FLUXLORA_TORCH_INDEX%" --extra-index-url https://pypi.org/simple
if errorlevel 1 (
    echo [fluxlora] ERROR: could not install torch. Check your internet connection and try again.
    pause
    exit /b 1
)
echo [fluxlora] installing FluxLoRA%EXTRAS% and its dependencies
"%PY%" -m pip install --quiet -e ".%EXTRAS%"
if errorlevel 1 (
    echo [fluxlora] ERROR: could not install FluxLoRA's dependencies; see the pip messages above.
    pause
    exit /b 1
)
>"%STAMP%" echo %WANT%
:installed

if "%MODE%"=="test" (
    echo [fluxlora] running the test suite
    "%PY%" -m pytest %ARGS%
    exit /b %ERRORLEVEL%
)

where nvidia-smi >nul 2>&1
if errorlevel 1 (
    echo [fluxlora] WARNING: no NVIDIA driver found ^(nvidia-smi missing^). Training will run on the CPU, very slowly.
    echo [fluxlora] Install the NVIDIA driver for your card to train on the GPU.
)
"%PY%" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >nul 2>&1
if errorlevel 1 echo [fluxlora] WARNING: torch cannot see a CUDA GPU; training will run on the CPU.

echo [fluxlora] starting the GUI at http://127.0.0.1:7860 (close this window to stop it)
"%PY%" -m engine gui --inbrowser %ARGS%
if errorlevel 1 (
    echo [fluxlora] ERROR: the GUI stopped with an error; the message is above.
    pause
    exit /b 1
)
endlocal
