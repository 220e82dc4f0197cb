/*
 * The paths the unit tests take from their environment: PD_MODEL (the backbone), PD_TESTDATA
 * (tests/data). `meson test -C build` sets them; a test binary run by hand without them stops at
 * once with a line saying so, rather than failing somewhere further on.
 */
#ifndef PD_TESTENV_H
#define PD_TESTENV_H

#include <stdio.h>
#include <stdlib.h>

static inline const char *test_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr,
                "%s is not set: run the unit tests with `meson test -C build`, which sets it, or "
                "set it by hand (PD_MODEL=models/ssd_mobilenet_v1.safetensors, "
                "PD_TESTDATA=tests/data)\n",
                name);
        exit(1);
    }
    return v;
}

#endif
