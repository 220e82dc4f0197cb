/* libFuzzer: training archives (tar, tar.gz, zip) read and extracted with the bomb limits. */
#include "../../core/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_dataset ds;
    if (pd_dataset_open_archive(data, size, 1u << 20, &ds, NULL) == PD_OK)
        pd_dataset_fini(&ds);
    return 0;
}
