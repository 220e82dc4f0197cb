/* libFuzzer: patchd's configuration parser. */
#include "../../server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_config c;
    pd_config_defaults(&c);
    pd_config_parse(&c, (const char *)data, size, NULL);
    pd_config_fini(&c);
    return 0;
}
