/* libFuzzer: the JPEG decode path (decode, EXIF orientation, resize into the network input). */
#include "../../core/image.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pd_image img;
    if (pd_image_decode_jpeg(data, size, 4u << 20, &img, NULL) == PD_OK) {
        static float in[64 * 64 * 3];
        struct pd_crop c = pd_crop_pad(&img);
        pd_image_to_input(&img, &c, 64, in);
        pd_image_fini(&img);
    }
    return 0;
}
