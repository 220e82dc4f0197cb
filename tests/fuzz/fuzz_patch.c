/* libFuzzer: patch validation against the real backbone ($PD_MODEL). */
#include "../../patches/patch.h"

#include <stdio.h>
#include <stdlib.h>

static pd_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *path = getenv("PD_MODEL");
    char msg[PD_MSG_MAX];
    if (!path || pd_model_load(path, &model, msg)) {
        fprintf(stderr, "fuzz_patch: set PD_MODEL to the backbone\n");
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_patch *p;
    if (pd_patch_parse(model, data, size, &p, NULL) == PD_OK) {
        uint8_t *buf;
        size_t len;
        if (pd_patch_serialize(p, &buf, &len, NULL) == PD_OK)
            free(buf);
        pd_patch_unref(p);
    }
    return 0;
}
