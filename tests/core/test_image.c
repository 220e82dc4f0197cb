/*
 * JPEG input: bad files give clear errors, odd but valid ones decode correctly. The test JPEGs
 * are made here with libjpeg's encoder, then some are damaged on purpose.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

/* Encodes w x h pixels (comps 1, 3 or 4 components) into a new buffer. */
static uint8_t *encode(int w, int h, int comps, J_COLOR_SPACE cs, int progressive,
                       const uint8_t *pix, const uint8_t *app1, unsigned app1_len, size_t *len)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long olen = 0;
    jpeg_mem_dest(&c, &out, &olen);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = comps;
    c.in_color_space = cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 100, TRUE);
    if (progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    if (app1)
        jpeg_write_marker(&c, JPEG_APP0 + 1, app1, app1_len);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(pix + (size_t)c.next_scanline * w * comps);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = olen;
    return out;
}

/* A 16x8 RGB image: left half red, right half blue. */
static uint8_t *halves(int comps)
{
    uint8_t *p = malloc(16 * 8 * 4);
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 16; x++) {
            uint8_t *q = p + (y * 16 + x) * comps;
            if (comps == 3) {
                q[0] = x < 8 ? 255 : 0, q[1] = 0, q[2] = x < 8 ? 0 : 255;
            } else if (comps == 4) {
                /* CMYK as Adobe stores it, inverted (255 = no ink): libjpeg writes an Adobe
                 * marker. Red is magenta + yellow ink, blue is cyan + magenta ink. */
                q[0] = x < 8 ? 255 : 0, q[1] = 0, q[2] = x < 8 ? 0 : 255, q[3] = 255;
            } else {
                q[0] = x < 8 ? 200 : 50;
            }
        }
    return p;
}

static int decode(const uint8_t *b, size_t n, struct pd_image *img, char *msg)
{
    return pd_image_decode_jpeg(b, n, PD_IMAGE_MAX_PIXELS, img, msg);
}

static void expect_error(const uint8_t *b, size_t n, int want, const char *needle)
{
    struct pd_image img;
    char msg[PD_MSG_MAX] = "";
    int err = decode(b, n, &img, msg);
    if (err != want || !strstr(msg, needle))
        print_error("err %d (%s), want %d containing '%s'\n", err, msg, want, needle);
    assert_int_equal(err, want);
    assert_non_null(strstr(msg, needle));
    assert_null(img.rgb);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    expect_error((const uint8_t *)"", 0, PD_FORMAT, "not a JPEG");
    expect_error((const uint8_t *)"GIF89a....", 10, PD_FORMAT, "not a JPEG");
    uint8_t *px = halves(3);
    size_t n;
    uint8_t *j = encode(16, 8, 3, JCS_RGB, 0, px, NULL, 0, &n);
    /* truncated: in the scan data, and in the headers */
    expect_error(j, n - 40, PD_FORMAT, "truncated");
    expect_error(j, n / 2, PD_FORMAT, "bad JPEG");
    /* only the SOI marker */
    expect_error(j, 4, PD_FORMAT, "");
    /* a header claiming 30000x30000: refused before any allocation */
    uint8_t *big = malloc(n);
    memcpy(big, j, n);
    for (size_t i = 0; i + 9 < n; i++)
        if (big[i] == 0xFF && big[i + 1] == 0xC0) { /* SOF0: len(2) prec(1) h(2) w(2) */
            big[i + 5] = 30000 >> 8, big[i + 6] = 30000 & 255;
            big[i + 7] = 30000 >> 8, big[i + 8] = 30000 & 255;
            break;
        }
    expect_error(big, n, PD_TOOBIG, "30000x30000");
    /* 12-bit precision in the header */
    memcpy(big, j, n);
    for (size_t i = 0; i + 9 < n; i++)
        if (big[i] == 0xFF && big[i + 1] == 0xC0) {
            big[i + 4] = 12;
            break;
        }
    struct pd_image img;
    char msg[PD_MSG_MAX] = "";
    int err = decode(big, n, &img, msg);
    assert_true(err == PD_FORMAT || err == PD_UNSUPPORTED);
    assert_non_null(strstr(msg, "12"));
    free(big);
    free(j);
    free(px);
}

static void expect_halves(const struct pd_image *img, int w, int h, int first_red, int vertical)
{
    assert_int_equal(img->w, w);
    assert_int_equal(img->h, h);
    /* sample the middle of each half */
    int ax = vertical ? w / 2 : w / 4, ay = vertical ? h / 4 : h / 2;
    int bx = vertical ? w / 2 : 3 * w / 4, by = vertical ? 3 * h / 4 : h / 2;
    const uint8_t *a = img->rgb + ((size_t)ay * w + ax) * 3,
                  *b = img->rgb + ((size_t)by * w + bx) * 3;
    const uint8_t *red = first_red ? a : b, *blue = first_red ? b : a;
    if (!(red[0] > 200 && red[2] < 60 && blue[2] > 200 && blue[0] < 60))
        print_error("red %d,%d,%d blue %d,%d,%d\n", red[0], red[1], red[2], blue[0], blue[1],
                    blue[2]);
    assert_true(red[0] > 200 && red[2] < 60);
    assert_true(blue[2] > 200 && blue[0] < 60);
}

static void test_good_inputs(void **state)
{
    (void)state;
    char msg[PD_MSG_MAX];
    struct pd_image img;
    size_t n;
    /* 1x1 */
    uint8_t one[3] = {10, 200, 30};
    uint8_t *j = encode(1, 1, 3, JCS_RGB, 0, one, NULL, 0, &n);
    assert_int_equal(decode(j, n, &img, msg), PD_OK);
    assert_int_equal(img.w, 1);
    assert_true(abs(img.rgb[1] - 200) < 8);
    float in[4 * 4 * 3];
    struct pd_crop crop = pd_crop_pad(&img);
    pd_image_to_input(&img, &crop, 4, in); /* upsampling a single pixel works */
    pd_image_fini(&img);
    free(j);
    /* RGB, progressive RGB, grayscale, CMYK */
    uint8_t *px = halves(3);
    j = encode(16, 8, 3, JCS_RGB, 0, px, NULL, 0, &n);
    assert_int_equal(decode(j, n, &img, msg), PD_OK);
    expect_halves(&img, 16, 8, 1, 0);
    pd_image_fini(&img);
    free(j);
    j = encode(16, 8, 3, JCS_RGB, 1, px, NULL, 0, &n);
    assert_int_equal(decode(j, n, &img, msg), PD_OK);
    expect_halves(&img, 16, 8, 1, 0);
    pd_image_fini(&img);
    free(j);
    free(px);
    px = halves(1);
    j = encode(16, 8, 1, JCS_GRAYSCALE, 0, px, NULL, 0, &n);
    assert_int_equal(decode(j, n, &img, msg), PD_OK);
    assert_int_equal(img.w, 16);
    const uint8_t *g = img.rgb + (4 * 16 + 4) * 3;
    assert_true(abs(g[0] - 200) < 6 && g[0] == g[1] && g[1] == g[2]);
    pd_image_fini(&img);
    free(j);
    free(px);
    px = halves(4);
    j = encode(16, 8, 4, JCS_CMYK, 0, px, NULL, 0, &n);
    int err = decode(j, n, &img, msg);
    if (err)
        print_error("%s\n", msg);
    assert_int_equal(err, PD_OK);
    expect_halves(&img, 16, 8, 1, 0);
    pd_image_fini(&img);
    free(j);
    free(px);
}

static void test_exif_orientation(void **state)
{
    (void)state;
    uint8_t *px = halves(3);
    /* Exif, little-endian TIFF, IFD0 with one entry: Orientation (0x0112) SHORT = o */
    uint8_t exif[6 + 8 + 2 + 12 + 4] = {'E', 'x', 'i', 'f', 0,    0,    'I', 'I', 42, 0, 8, 0,
                                        0,   0,   1,   0,   0x12, 0x01, 3,   0,   1,  0, 0, 0};
    struct {
        int o, w, h, first_red, vertical;
    } cases[] = {
        {1, 16, 8, 1, 0}, {2, 16, 8, 0, 0}, {3, 16, 8, 0, 0}, {4, 16, 8, 1, 0},
        {5, 8, 16, 1, 1}, {6, 8, 16, 1, 1}, {7, 8, 16, 0, 1}, {8, 8, 16, 0, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        exif[6 + 8 + 2 + 8] = (uint8_t)cases[i].o;
        size_t n;
        uint8_t *j = encode(16, 8, 3, JCS_RGB, 0, px, exif, sizeof(exif), &n);
        struct pd_image img;
        char msg[PD_MSG_MAX];
        assert_int_equal(decode(j, n, &img, msg), PD_OK);
        expect_halves(&img, cases[i].w, cases[i].h, cases[i].first_red, cases[i].vertical);
        pd_image_fini(&img);
        free(j);
    }
    free(px);
}

/* DCT-domain scaling: the largest power-of-two reduction that keeps the longer side at least the
 * requested one; colours survive it (a smooth gradient averages to itself). */
static void test_scaled_decode(void **state)
{
    (void)state;
    const int w = 1000, h = 600;
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = px + ((size_t)y * w + x) * 3;
            q[0] = (uint8_t)(x * 255 / w), q[1] = (uint8_t)(y * 255 / h), q[2] = 128;
        }
    size_t n;
    uint8_t *j = encode(w, h, 3, JCS_RGB, 0, px, NULL, 0, &n);
    char msg[PD_MSG_MAX];
    static const int want[][3] = {{0, 1000, 600},  {224, 250, 150},  {250, 250, 150},
                                  {251, 500, 300}, {600, 1000, 600}, {100, 125, 75}};
    for (size_t t = 0; t < sizeof(want) / sizeof(want[0]); t++) {
        struct pd_image img;
        assert_int_equal(
            pd_image_decode_jpeg_scaled(j, n, PD_IMAGE_MAX_PIXELS, want[t][0], &img, msg), PD_OK);
        assert_int_equal(img.w, want[t][1]);
        assert_int_equal(img.h, want[t][2]);
        /* the pixel at the same relative place has about the same colour */
        const uint8_t *c = img.rgb + ((size_t)(img.h / 2) * img.w + img.w / 4) * 3;
        assert_true(abs((int)c[0] - 255 / 4) <= 4 && abs((int)c[1] - 255 / 2) <= 4 &&
                    abs((int)c[2] - 128) <= 4);
        pd_image_fini(&img);
    }
    free(j);
    free(px);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_good_inputs),
        cmocka_unit_test(test_exif_orientation),
        cmocka_unit_test(test_scaled_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
