/* The tfjs converter on a tiny hand-written manifest with known values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/st.h"
#include "../../core/tfjs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

static void write_file(const char *name, const void *data, size_t len)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/pd_tfjs_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd);
}

static const char manifest[] =
    "[{\"paths\":[\"w1.bin\",\"w2.bin\"],\"weights\":["
    "{\"name\":\"q/f\",\"shape\":[2,2],\"dtype\":\"float32\","
    "\"quantization\":{\"dtype\":\"uint8\",\"scale\":0.5,\"min\":-1.0}},"
    "{\"name\":\"q/i\",\"shape\":[3],\"dtype\":\"int32\","
    "\"quantization\":{\"dtype\":\"uint8\",\"scale\":0.00392156862745098,\"min\":0}},"
    "{\"name\":\"raw\",\"shape\":[2],\"dtype\":\"float32\"}]}]";

static void test_convert_known_values(void **state)
{
    (void)state;
    /* q/f: 4 uint8; q/i: 3 uint8; raw: 2 float32; split over two files mid-weight */
    uint8_t bin[4 + 3 + 8] = {0, 1, 2, 255, 0, 128, 255};
    float raw[2] = {3.25f, -7.0f};
    memcpy(bin + 7, raw, 8);
    write_file("w1.bin", bin, 5);
    write_file("w2.bin", bin + 5, sizeof(bin) - 5);
    write_file("m.json", manifest, strlen(manifest));
    char mpath[128], out[128], msg[PD_MSG_MAX] = "";
    snprintf(mpath, sizeof(mpath), "%s/m.json", dir);
    snprintf(out, sizeof(out), "%s/out.safetensors", dir);
    int err = pd_tfjs_convert(mpath, "test@1", out, msg);
    if (err)
        print_error("%s\n", msg);
    assert_int_equal(err, PD_OK);

    pd_st *st;
    assert_int_equal(pd_st_open(out, 1 << 20, &st, msg), PD_OK);
    assert_int_equal(pd_st_count(st), 3);
    assert_string_equal(pd_st_at(st, 0)->name, "q/f"); /* manifest order kept */
    float f[4];
    int64_t shape[2] = {2, 2};
    assert_int_equal(pd_st_read_f32(pd_st_find(st, "q/f"), 2, shape, f, msg), PD_OK);
    assert_true(f[0] == -1.0f && f[1] == -0.5f && f[2] == 0.0f && f[3] == 126.5f);
    const struct pd_st_tensor *ti = pd_st_find(st, "q/i");
    assert_int_equal(ti->dtype, PD_DT_I32);
    int32_t iv[3];
    memcpy(iv, ti->data, 12);
    assert_int_equal(iv[0], 0);
    assert_int_equal(iv[1], 1); /* 128/255 rounds to 1 */
    assert_int_equal(iv[2], 1);
    float r[2];
    int64_t rs[1] = {2};
    assert_int_equal(pd_st_read_f32(pd_st_find(st, "raw"), 1, rs, r, msg), PD_OK);
    assert_memory_equal(r, raw, 8);
    assert_string_equal(pd_st_meta(st, "format"), "patchd-backbone");
    assert_string_equal(pd_st_meta(st, "source"), "test@1");
    assert_string_equal(pd_st_meta(st, "converter"), PD_TFJS_CONVERTER);
    char sha[65];
    pd_sha256_hex(bin, sizeof(bin), sha);
    assert_string_equal(pd_st_meta(st, "source_sha256"), sha);

    /* converting twice gives the same bytes */
    size_t len1, len2;
    const uint8_t *b1 = pd_st_bytes(st, &len1);
    uint8_t *copy = malloc(len1);
    memcpy(copy, b1, len1);
    pd_st_free(st);
    assert_int_equal(pd_tfjs_convert(mpath, "test@1", out, msg), PD_OK);
    assert_int_equal(pd_st_open(out, 1 << 20, &st, msg), PD_OK);
    const uint8_t *b2 = pd_st_bytes(st, &len2);
    assert_int_equal(len1, len2);
    assert_memory_equal(copy, b2, len1);
    free(copy);
    pd_st_free(st);
}

static void test_convert_errors(void **state)
{
    (void)state;
    char mpath[128], out[128], msg[PD_MSG_MAX];
    snprintf(mpath, sizeof(mpath), "%s/m2.json", dir);
    snprintf(out, sizeof(out), "%s/out2.safetensors", dir);
    /* weight files too short for the weights */
    uint8_t small[3] = {0};
    write_file("w1.bin", small, 3);
    write_file("w2.bin", small, 0);
    write_file("m2.json", manifest, strlen(manifest));
    assert_int_equal(pd_tfjs_convert(mpath, NULL, out, msg), PD_FORMAT);
    assert_non_null(strstr(msg, "q/f"));
    assert_int_equal(access(out, F_OK), -1); /* nothing half-written */
    /* a path escaping the directory */
    const char *esc = "[{\"paths\":[\"../x.bin\"],\"weights\":[]}]";
    write_file("m2.json", esc, strlen(esc));
    assert_int_equal(pd_tfjs_convert(mpath, NULL, out, msg), PD_FORMAT);
    /* not JSON */
    write_file("m2.json", "nope", 4);
    assert_int_equal(pd_tfjs_convert(mpath, NULL, out, msg), PD_FORMAT);
    /* missing weight file */
    const char *miss = "[{\"paths\":[\"absent.bin\"],\"weights\":[]}]";
    write_file("m2.json", miss, strlen(miss));
    assert_int_equal(pd_tfjs_convert(mpath, NULL, out, msg), PD_NOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_known_values),
        cmocka_unit_test(test_convert_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
