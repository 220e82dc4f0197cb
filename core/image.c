#include "image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

struct err_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    int truncated;
};

static void on_error(j_common_ptr cinfo)
{
    struct err_mgr *e = (struct err_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

static void on_message(j_common_ptr cinfo, int level)
{
    struct err_mgr *e = (struct err_mgr *)cinfo->err;
    /* level -1 is a warning; premature end of data means the file is truncated */
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        e->truncated = 1;
}

/* Reads the EXIF orientation (1-8) from an APP1 marker; 1 when absent or unreadable. */
static int exif_orientation(j_decompress_ptr cinfo)
{
    for (jpeg_saved_marker_ptr mk = cinfo->marker_list; mk; mk = mk->next) {
        const uint8_t *d = mk->data;
        size_t n = mk->data_length;
        if (mk->marker != JPEG_APP0 + 1 || n < 14 || memcmp(d, "Exif\0\0", 6))
            continue;
        const uint8_t *t = d + 6;
        n -= 6;
        int le;
        if (!memcmp(t, "II", 2))
            le = 1;
        else if (!memcmp(t, "MM", 2))
            le = 0;
        else
            return 1;
#define U16(p) (le ? (unsigned)((p)[0] | (p)[1] << 8) : (unsigned)((p)[0] << 8 | (p)[1]))
#define U32(p)                                                                                     \
    (le ? ((uint32_t)(p)[0] | (uint32_t)(p)[1] << 8 | (uint32_t)(p)[2] << 16 |                     \
           (uint32_t)(p)[3] << 24)                                                                 \
        : ((uint32_t)(p)[0] << 24 | (uint32_t)(p)[1] << 16 | (uint32_t)(p)[2] << 8 |               \
           (uint32_t)(p)[3]))
        if (U16(t + 2) != 42)
            return 1;
        uint32_t ifd = U32(t + 4);
        if (ifd > n - 2)
            return 1;
        unsigned count = U16(t + ifd);
        for (unsigned i = 0; i < count; i++) {
            size_t at = ifd + 2 + 12 * (size_t)i;
            if (at + 12 > n)
                return 1;
            if (U16(t + at) == 0x0112 && U16(t + at + 2) == 3) {
                unsigned v = U16(t + at + 8);
                return v >= 1 && v <= 8 ? (int)v : 1;
            }
        }
#undef U16
#undef U32
        return 1;
    }
    return 1;
}

/* Applies an EXIF orientation: returns a new buffer (or NULL), sets *w, *h to the upright size. */
static uint8_t *orient(const uint8_t *src, int w, int h, int o, int *ow, int *oh)
{
    int swap = o >= 5;
    *ow = swap ? h : w;
    *oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)w * h * 3);
    if (!dst)
        return NULL;
    for (int y = 0; y < *oh; y++) {
        for (int x = 0; x < *ow; x++) {
            int sx, sy;
            switch (o) {
            case 2:
                sx = w - 1 - x, sy = y;
                break;
            case 3:
                sx = w - 1 - x, sy = h - 1 - y;
                break;
            case 4:
                sx = x, sy = h - 1 - y;
                break;
            case 5:
                sx = y, sy = x;
                break;
            case 6:
                sx = y, sy = h - 1 - x;
                break;
            case 7:
                sx = w - 1 - y, sy = h - 1 - x;
                break;
            case 8:
                sx = w - 1 - y, sy = x;
                break;
            default:
                sx = x, sy = y;
                break;
            }
            memcpy(dst + ((size_t)y * *ow + x) * 3, src + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    return dst;
}

int pd_image_decode_jpeg(const uint8_t *buf, size_t len, size_t max_pixels, struct pd_image *img,
                         char *msg)
{
    return pd_image_decode_jpeg_scaled(buf, len, max_pixels, 0, img, msg);
}

int pd_image_decode_jpeg_scaled(const uint8_t *buf, size_t len, size_t max_pixels, int min_side,
                                struct pd_image *img, char *msg)
{
    memset(img, 0, sizeof(*img));
    if (len < 4 || buf[0] != 0xFF || buf[1] != 0xD8)
        return pd_fail(msg, PD_FORMAT, "not a JPEG (no SOI marker)");
    struct jpeg_decompress_struct cinfo;
    struct err_mgr jerr;
    memset(&jerr, 0, sizeof(jerr));
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = on_error;
    jerr.pub.emit_message = on_message;
    /* volatile: modified between setjmp and longjmp */
    uint8_t *volatile pixels = NULL;
    if (setjmp(jerr.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return pd_fail(msg, PD_FORMAT, "bad JPEG: %s", jerr.msg);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.mem->max_memory_to_use = 512L << 20;
    jpeg_mem_src(&cinfo, buf, (unsigned long)len);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.data_precision != 8) {
        jpeg_destroy_decompress(&cinfo);
        return pd_fail(msg, PD_UNSUPPORTED, "%d-bit JPEG is not supported (8-bit only)",
                       cinfo.data_precision);
    }
    uint64_t npix = (uint64_t)cinfo.image_width * cinfo.image_height;
    if (npix > max_pixels) {
        jpeg_destroy_decompress(&cinfo);
        return pd_fail(msg, PD_TOOBIG, "image is %ux%u, more than the limit of %zu pixels",
                       cinfo.image_width, cinfo.image_height, max_pixels);
    }
    if (min_side > 0) {
        /* libjpeg-turbo scales in the DCT domain: 1/8 of the pixels' work for 1/8 the side */
        unsigned side =
            cinfo.image_width > cinfo.image_height ? cinfo.image_width : cinfo.image_height;
        for (unsigned d = 8; d >= 2; d /= 2)
            if ((side + d - 1) / d >= (unsigned)min_side) {
                cinfo.scale_num = 1;
                cinfo.scale_denom = d;
                break;
            }
    }
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    const int nc = cinfo.output_components;
    pixels = malloc((size_t)w * h * 3 + (size_t)w * 4);
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return pd_fail(msg, PD_NOMEM, "cannot allocate %dx%d pixels", w, h);
    }
    uint8_t *row4 = pixels + (size_t)w * h * 3; /* one CMYK row */
    while (cinfo.output_scanline < cinfo.output_height) {
        uint8_t *dst = pixels + (size_t)cinfo.output_scanline * w * 3;
        JSAMPROW row = nc == 4 ? row4 : dst;
        jpeg_read_scanlines(&cinfo, &row, 1);
        if (nc == 4) {
            /* Adobe writes CMYK inverted (0 = full ink); others do not */
            int inv = cinfo.saw_Adobe_marker;
            for (int x = 0; x < w; x++) {
                unsigned c = row4[4 * x], m = row4[4 * x + 1], y = row4[4 * x + 2],
                         k = row4[4 * x + 3];
                if (!inv)
                    c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
                dst[3 * x] = (uint8_t)((c * k + 127) / 255);
                dst[3 * x + 1] = (uint8_t)((m * k + 127) / 255);
                dst[3 * x + 2] = (uint8_t)((y * k + 127) / 255);
            }
        }
        if (jerr.truncated)
            break;
    }
    int o = exif_orientation(&cinfo);
    if (jerr.truncated) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return pd_fail(msg, PD_FORMAT, "truncated JPEG (premature end of data)");
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    if (jerr.truncated) {
        free(pixels);
        return pd_fail(msg, PD_FORMAT, "truncated JPEG (premature end of data)");
    }
    img->w = w;
    img->h = h;
    img->rgb = pixels;
    if (o != 1) {
        int ow, oh;
        uint8_t *up = orient(pixels, w, h, o, &ow, &oh);
        free(pixels);
        if (!up) {
            memset(img, 0, sizeof(*img));
            return pd_fail(msg, PD_NOMEM, "out of memory");
        }
        img->rgb = up;
        img->w = ow;
        img->h = oh;
    }
    return PD_OK;
}

void pd_image_fini(struct pd_image *img)
{
    free(img->rgb);
    memset(img, 0, sizeof(*img));
}

struct pd_crop pd_crop_pad(const struct pd_image *img)
{
    struct pd_crop c = {0, 0, img->w, img->h, 1, 0};
    return c;
}

struct pd_crop pd_crop_full(const struct pd_image *img)
{
    struct pd_crop c = {0, 0, img->w, img->h, 0, 0};
    return c;
}

void pd_image_to_input(const struct pd_image *img, const struct pd_crop *crop, int size, float *out)
{
    PD_ASSERT(crop->x >= 0 && crop->y >= 0 && crop->w > 0 && crop->h > 0);
    PD_ASSERT(crop->x + crop->w <= img->w && crop->y + crop->h <= img->h);
    /* the virtual source: the crop, padded to a square with zeros when asked */
    int sw = crop->w, sh = crop->h;
    if (crop->pad_square)
        sw = sh = sw > sh ? sw : sh;
    const float ry = (float)sh / (float)size, rx = (float)sw / (float)size;
    for (int y = 0; y < size; y++) {
        float fy = (float)y * ry;
        int y0 = (int)floorf(fy);
        int y1 = (int)ceilf(fy);
        y1 = y1 < sh - 1 ? y1 : sh - 1;
        float ly = fy - (float)y0;
        for (int x = 0; x < size; x++) {
            float fx = (float)x * rx;
            int x0 = (int)floorf(fx);
            int x1 = (int)ceilf(fx);
            x1 = x1 < sw - 1 ? x1 : sw - 1;
            float lx = fx - (float)x0;
            float *o = out + ((size_t)y * size + (crop->flip ? size - 1 - x : x)) * 3;
            for (int c = 0; c < 3; c++) {
                float p[4];
                const int ys[2] = {y0, y1}, xs[2] = {x0, x1};
                for (int k = 0; k < 4; k++) {
                    int yy = ys[k >> 1], xx = xs[k & 1];
                    p[k] =
                        (xx < crop->w && yy < crop->h)
                            ? (float)
                                  img->rgb[((size_t)(crop->y + yy) * img->w + crop->x + xx) * 3 + c]
                            : 0.0f;
                }
                float top = p[0] + (p[1] - p[0]) * lx;
                float bottom = p[2] + (p[3] - p[2]) * lx;
                float v = top + (bottom - top) * ly;
                o[c] = v / 127.5f - 1.0f;
            }
        }
    }
}
