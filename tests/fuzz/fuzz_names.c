/* libFuzzer: task and tenant names, and store paths built from them. A name the validator
 * accepts must never lead outside the store: no '/', no '.' first, no NUL, at most 64 bytes. */
#include "../../patches/store.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (pd_store_valid_name(s)) {
        size_t n = strlen(s);
        PD_ASSERT(n >= 1 && n <= PD_NAME_MAX);
        PD_ASSERT(!strchr(s, '/') && s[0] != '.' && s[0] != '-' && s[0] != '_');
        for (size_t i = 0; i < n; i++)
            PD_ASSERT((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-' ||
                      s[i] == '_');
    }
    free(s);
    return 0;
}
