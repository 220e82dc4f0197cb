/*
 * image.h - JPEG decoding and the resize that feeds the network.
 *
 * Decoding uses libjpeg-turbo with its default settings (islow IDCT, fancy upsampling), so the
 * RGB bytes equal `djpeg`'s. Grayscale is expanded to RGB; CMYK and YCCK are converted to RGB
 * (Adobe's inverted CMYK is recognised); progressive JPEGs decode as usual; 12-bit JPEGs are
 * refused (PD_UNSUPPORTED). The EXIF orientation tag (1-8), when present, is applied after
 * decoding, so a phone photo comes out upright; width and height are those of the upright image.
 * The pixel count is checked against a limit right after the header is read, before any large
 * allocation. A truncated file is an error, not a grey-filled image.
 *
 * Resizing is TensorFlow.js's resizeBilinear with alignCorners=false and halfPixelCenters=false
 * (source = dst * in/out, floor and ceil neighbours, lerp along x then y, float32), which is what
 * face-api feeds its network. Normalisation is x / 127.5 - 1.
 *
 * Threads: reentrant.
 */
#ifndef PD_IMAGE_H
#define PD_IMAGE_H

#include "pd.h"

struct pd_image {
    int w, h;
    uint8_t *rgb; /* (h, w, 3), owned; free with pd_image_fini */
};

/* Default limit on decoded pixels (width x height). */
#define PD_IMAGE_MAX_PIXELS (50u * 1000u * 1000u)

/* Decodes a JPEG; on failure img is zeroed and msg names the problem (PD_FORMAT, PD_TOOBIG,
 * PD_UNSUPPORTED, PD_NOMEM). */
int pd_image_decode_jpeg(const uint8_t *buf, size_t len, size_t max_pixels, struct pd_image *img,
                         char *msg);
/*
 * The same, decoding at 1/2, 1/4 or 1/8 of the size in the DCT domain (libjpeg-turbo's scaling)
 * when the longer side stays at least min_side: a classifier at 224 reads a 4000x3000 photo at
 * 500x375, several times faster. 0 decodes at full size (the faces detector always does: its
 * parity with the reference is at full size).
 */
int pd_image_decode_jpeg_scaled(const uint8_t *buf, size_t len, size_t max_pixels, int min_side,
                                struct pd_image *img, char *msg);
void pd_image_fini(struct pd_image *img);

/* Where to read the source from and how to place it in the square output. */
struct pd_crop {
    int x, y, w, h; /* source rectangle, inside the image */
    int pad_square; /* 1: pad bottom/right with zeros to a square (faces); 0: stretch */
    int flip;       /* 1: mirror horizontally */
};

/* The whole image, padded to a square (face-api's preprocessing). */
struct pd_crop pd_crop_pad(const struct pd_image *img);
/* The whole image, stretched to the square (classification). */
struct pd_crop pd_crop_full(const struct pd_image *img);

/* Resizes the crop to (size, size, 3) floats normalised to [-1, 1]. */
void pd_image_to_input(const struct pd_image *img, const struct pd_crop *crop, int size,
                       float *out);

#endif
