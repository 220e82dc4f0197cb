/* safetensors reader and writer: round trip, and every kind of malformed file refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/st.h"

#include <stdlib.h>
#include <string.h>

/* Builds "u64 len | header | data" into a new buffer; hlen_override < 0 means honest. */
static uint8_t *image(const char *header, const void *data, size_t dlen, int64_t hlen_override,
                      size_t *len)
{
    size_t hl = strlen(header);
    *len = 8 + hl + dlen;
    uint8_t *b = malloc(*len);
    uint64_t h = hlen_override >= 0 ? (uint64_t)hlen_override : hl;
    memcpy(b, &h, 8);
    memcpy(b + 8, header, hl);
    if (dlen)
        memcpy(b + 8 + hl, data, dlen);
    return b;
}

/* Parses and expects failure with a message containing `needle`. */
static void expect_bad(const char *header, size_t dlen, int64_t hlen, const char *needle)
{
    uint8_t data[64] = {0};
    size_t len;
    uint8_t *b = image(header, data, dlen, hlen, &len);
    pd_st *st = (pd_st *)1;
    char msg[PD_MSG_MAX] = "";
    int err = pd_st_parse(b, len, 1, &st, msg);
    if (err != PD_FORMAT || !strstr(msg, needle))
        print_error("header %s\n  err %d, message '%s', expected '%s'\n", header, err, msg, needle);
    assert_int_equal(err, PD_FORMAT);
    assert_null(st);
    assert_non_null(strstr(msg, needle));
    free(b);
}

static void test_roundtrip(void **state)
{
    (void)state;
    float a[6] = {1, -2, 3.5f, 0, 1e-30f, 6};
    int32_t b[2] = {7, -8};
    struct pd_st_tensor ts[2] = {
        {.name = "a", .dtype = PD_DT_F32, .ndim = 2, .shape = {2, 3}, .data = a, .nbytes = 24},
        {.name = "b/c", .dtype = PD_DT_I32, .ndim = 1, .shape = {2}, .data = b, .nbytes = 8},
    };
    const char *meta[] = {"k", "v", "format", "x"};
    uint8_t *buf;
    size_t len;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_st_serialize(ts, 2, meta, 2, &buf, &len, msg), PD_OK);
    uint64_t hl;
    memcpy(&hl, buf, 8);
    assert_int_equal(hl % 8, 0);
    pd_st *st;
    assert_int_equal(pd_st_parse(buf, len, 0, &st, msg), PD_OK);
    assert_int_equal(pd_st_count(st), 2);
    const struct pd_st_tensor *t = pd_st_find(st, "a");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[1], 3);
    assert_memory_equal(t->data, a, sizeof(a));
    t = pd_st_find(st, "b/c");
    assert_non_null(t);
    assert_int_equal(t->dtype, PD_DT_I32);
    assert_memory_equal(t->data, b, sizeof(b));
    assert_string_equal(pd_st_meta(st, "k"), "v");
    assert_string_equal(pd_st_meta(st, "format"), "x");
    assert_null(pd_st_meta(st, "nope"));
    float got[6];
    int64_t shape[2] = {2, 3};
    assert_int_equal(pd_st_read_f32(pd_st_find(st, "a"), 2, shape, got, msg), PD_OK);
    assert_memory_equal(got, a, sizeof(a));
    int64_t wrong[2] = {3, 2};
    assert_int_equal(pd_st_read_f32(pd_st_find(st, "a"), 2, wrong, got, msg), PD_MISMATCH);
    assert_non_null(strstr(msg, "expected F32 [3,2], found F32 [2,3]"));
    pd_st_free(st);
    free(buf);
}

static void test_scalar_and_empty(void **state)
{
    (void)state;
    float s = 2.5f;
    size_t len;
    uint8_t *b = image("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                       "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]}}",
                       &s, 4, -1, &len);
    pd_st *st;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_st_parse(b, len, 0, &st, msg), PD_OK);
    assert_int_equal(pd_st_numel(pd_st_find(st, "s")), 1);
    assert_int_equal(pd_st_numel(pd_st_find(st, "e")), 0);
    pd_st_free(st);
    free(b);
}

static void test_malformed(void **state)
{
    (void)state;
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    /* truncated: shorter than the length prefix */
    {
        uint8_t b[5] = {1, 2, 3, 4, 5};
        pd_st *st;
        char msg[PD_MSG_MAX];
        assert_int_equal(pd_st_parse(b, 5, 1, &st, msg), PD_FORMAT);
        assert_non_null(strstr(msg, "too short"));
        assert_int_equal(pd_st_parse(b, 0, 1, &st, msg), PD_FORMAT);
    }
    /* header length past the end of the file, and the data cut short */
    expect_bad(ok1, 8, 1000, "past the end of the file");
    expect_bad(ok1, 8, INT64_MAX, "past the end of the file");
    expect_bad(ok1, 4, -1, "past the data section");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, -1,
               "not valid JSON");
    expect_bad("[1,2]", 0, -1, "not a JSON object");
    expect_bad("\"str\"", 0, -1, "not a JSON object");
    expect_bad("", 0, -1, "not a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, -1, "duplicate");
    expect_bad("{\"a\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1,
               "unknown dtype 'F99'");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1,
               "does not match shape x dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, -1, "overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1, "hole");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, -1,
               "trailing bytes");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, -1,
               "not ordered");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, -1,
               "not ordered");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8, -1,
               "data_offsets is not");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
               "\"data_offsets\":[0,8]}}",
               8, -1, "absurdly large");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,8],"
               "\"data_offsets\":[0,0]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
               "\"data_offsets\":[0,8]}}",
               8, -1, "absurdly large");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, -1, "dimensions");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -1,
               "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, -1,
               "shape[0]");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, -1, "shape");
    expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "dtype");
    expect_bad("{\"a\":7}", 0, -1, "not an object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, -1,
               "unknown field 'x'");
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, -1, "not a string");
    expect_bad("{\"__metadata__\":[]}", 0, -1, "__metadata__ is not an object");
    expect_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1,
               "empty name");
}

static void test_open_missing(void **state)
{
    (void)state;
    pd_st *st;
    char msg[PD_MSG_MAX];
    assert_int_equal(pd_st_open("/nonexistent/x.safetensors", 1 << 20, &st, msg), PD_NOTFOUND);
    assert_null(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_scalar_and_empty),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_open_missing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
