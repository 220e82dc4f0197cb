/*
 * tfjs.h - converts a TensorFlow.js graph-model weights manifest to safetensors.
 *
 * A tfjs manifest is a JSON array of groups {"paths": [FILE...], "weights": [{"name", "shape",
 * "dtype", "quantization"?}...]}; each group's files, concatenated, hold its weights back to back
 * in the listed order. Quantised weights (quantization.dtype "uint8" or "uint16") are stored as
 * integers q and mean q * scale + min: the converter computes that in double precision and rounds
 * once to the tensor's dtype (float32 as is, int32 to the nearest integer), exactly as
 * tfjs-core's decodeWeights does, so the converted values equal what TensorFlow.js computes with.
 * Unquantised float32 and int32 are copied as they are.
 *
 * The output keeps the manifest's tensor names and order and carries metadata: "format"
 * ("patchd-backbone"), "converter" (this version), "source" (what the caller names, e.g. the npm
 * package and version), "source_sha256" (of the concatenated weight files). The output is a pure
 * function of the inputs, so converting twice gives the same bytes.
 */
#ifndef PD_TFJS_H
#define PD_TFJS_H

#include "pd.h"

#define PD_TFJS_CONVERTER "patchd-tfjs-convert/1"

/* Largest weight file set the converter will read. */
#define PD_TFJS_MAX_BYTES (1u << 30)

/*
 * Converts manifest_path (weight files resolved relative to its directory) to a safetensors file
 * written atomically at out_path. `source` (may be NULL) goes into the metadata.
 */
int pd_tfjs_convert(const char *manifest_path, const char *source, const char *out_path, char *msg);

#endif
