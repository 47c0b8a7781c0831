/* LD_PRELOAD shim for tritonserver: the admin key goes into argv inside the process, never onto
 * the command line that `ps` and /proc/PID/cmdline show to every local user.
 *
 * tritonserver takes the key only as a flag (--grpc-restricted-protocol=...:header=KEY), with no
 * config file or environment variable for it. bonescan puts a placeholder there and the key in
 * BONESCAN_ADMIN_KEY, set for the child alone. On glibc an ELF constructor receives argc / argv /
 * envp before main() runs: this one points each argv entry holding the placeholder at a heap copy
 * with the key, overwrites the key's bytes in the environment block (what /proc/PID/environ
 * shows) and unsets the variable, so the python-backend stubs tritonserver starts never see it.
 * /proc/PID/cmdline keeps showing the placeholder. Built by bonescan.serving.server (cc -shared -fPIC -O2).
 */
#include <stdlib.h>
#include <string.h>

#define KEY_VAR "BONESCAN_ADMIN_KEY"
#define PLACEHOLDER_VAR "BONESCAN_ADMIN_KEY_PLACEHOLDER"

static char *take(char **envp, const char *name, int scrub) {
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
            char *copy = strdup(*e + n + 1);
            if (scrub) memset(*e + n + 1, '*', strlen(*e + n + 1));
            return copy;
        }
    }
    return NULL;
}

__attribute__((constructor)) static void bonescan_admin_key(int argc, char **argv, char **envp) {
    char *key = take(envp, KEY_VAR, 1), *mark = take(envp, PLACEHOLDER_VAR, 0);
    unsetenv(KEY_VAR);
    unsetenv(PLACEHOLDER_VAR);
    if (!key || !mark || !*mark) return;
    size_t k = strlen(key), m = strlen(mark);
    for (int i = 1; i < argc; i++) {
        char *at = strstr(argv[i], mark);
        if (!at) continue;
        char *s = malloc(strlen(argv[i]) - m + k + 1);
        if (!s) abort();
        memcpy(s, argv[i], (size_t)(at - argv[i]));
        memcpy(s + (at - argv[i]), key, k);
        strcpy(s + (at - argv[i]) + k, at + m);
        argv[i] = s;
    }
    memset(key, 0, k);
    free(key);
    free(mark);
}
