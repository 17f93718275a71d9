/* A stand-in for py.exe, python.exe or nvidia-smi.exe in the launch.bat test (built at test time).

   Appends "NAME<TAB>arg1<TAB>arg2...\n" (UTF-8) to %STANDIN_LOG%, then answers from
   %STANDIN_RULES%: lines "NAME<TAB>SUBSTRING<TAB>EXIT<TAB>ACTION<TAB>TEXT"; the first line whose
   NAME matches and whose SUBSTRING occurs in the space-joined arguments wins. ACTION "venv" copies
   %STANDIN_PYTHON% to LASTARG\Scripts\python.exe (what "py -m venv DIR" makes); "-" does nothing.
   TEXT (\n for line breaks) is printed. No matching line: exit 0, print nothing. */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <wchar.h>

static char *utf8(const wchar_t *text) {
    int size = WideCharToMultiByte(CP_UTF8, 0, text, -1, NULL, 0, NULL, NULL);
    char *out = malloc(size);
    WideCharToMultiByte(CP_UTF8, 0, text, -1, out, size, NULL, NULL);
    return out;
}

static void make_venv(const wchar_t *dir) {
    wchar_t path[4096], source[4096];
    if (!GetEnvironmentVariableW(L"STANDIN_PYTHON", source, 4096)) return;
    swprintf(path, 4096, L"%ls\\Scripts", dir);
    CreateDirectoryW(dir, NULL);
    CreateDirectoryW(path, NULL);
    swprintf(path, 4096, L"%ls\\Scripts\\python.exe", dir);
    CopyFileW(source, path, FALSE);
}

int wmain(int argc, wchar_t **argv) {
    wchar_t env[4096];
    char name[256], joined[32768] = "", spaced[32768] = "", line[8192];
    const wchar_t *base = wcsrchr(argv[0], L'\\');
    char *exe = utf8(base ? base + 1 : argv[0]);
    strncpy(name, exe, sizeof name - 1);
    name[sizeof name - 1] = 0;
    for (char *c = name; *c; c++) *c = (char)tolower(*c);
    char *dot = strstr(name, ".exe");
    if (dot) *dot = 0;
    for (int i = 1; i < argc; i++) {
        char *arg = utf8(argv[i]);
        strncat(joined, "\t", sizeof joined - strlen(joined) - 1);
        strncat(joined, arg, sizeof joined - strlen(joined) - 1);
        strncat(spaced, " ", sizeof spaced - strlen(spaced) - 1);
        strncat(spaced, arg, sizeof spaced - strlen(spaced) - 1);
        free(arg);
    }
    if (GetEnvironmentVariableW(L"STANDIN_LOG", env, 4096)) {
        FILE *log = _wfopen(env, L"ab");
        if (log) { fprintf(log, "%s%s\n", name, joined); fclose(log); }
    }
    if (!GetEnvironmentVariableW(L"STANDIN_RULES", env, 4096)) return 0;
    FILE *rules = _wfopen(env, L"rb");
    if (!rules) return 0;
    while (fgets(line, sizeof line, rules)) {
        line[strcspn(line, "\r\n")] = 0;
        char *fields[5] = {0};
        char *cursor = line;
        for (int f = 0; f < 5 && cursor; f++) {
            fields[f] = cursor;
            cursor = strchr(cursor, '\t');
            if (cursor) *cursor++ = 0;
        }
        if (!fields[4] || strcmp(fields[0], name) != 0 || !strstr(spaced, fields[1])) continue;
        if (strcmp(fields[3], "venv") == 0 && argc > 1) make_venv(argv[argc - 1]);
        for (char *c = fields[4]; *c; c++) {
            if (c[0] == '\\' && c[1] == 'n') { putchar('\n'); c++; } else putchar(*c);
        }
        fflush(stdout);
        fclose(rules);
        return atoi(fields[2]);
    }
    fclose(rules);
    return 0;
}
