/* libFuzzer: safetensors parsing; every tensor found is read end to end. */
#include "../../core/st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_st *st;
    if (pd_st_parse(data, size, 0, &st, NULL) == PD_OK) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < pd_st_count(st); i++) {
            const struct pd_st_tensor *t = pd_st_at(st, i);
            const uint8_t *p = t->data;
            for (size_t k = 0; k < t->nbytes; k += 97)
                sink ^= p[k];
        }
        (void)sink;
        pd_st_free(st);
    }
    return 0;
}
