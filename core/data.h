/*
 * data.h - labelled image sets for training and evaluation.
 *
 * A dataset is a directory of class folders of JPEGs (dir/daisy/1.jpg, dir/rose/2.jpg, ...) or
 * an archive (tar, tar.gz, zip; through libarchive) of the same. Labels are the folder names,
 * sorted; files other than .jpg/.jpeg are ignored. Fewer than 2 classes, or a class with no image,
 * is an error (PD_FORMAT) naming it.
 *
 * Archives are extracted into a new temporary directory under names the reader makes up
 * (class index and a counter), never under the names in the archive: an entry can never write
 * outside that directory. Entries whose path has a ".." component or is absolute make the whole
 * archive invalid (PD_FORMAT); links, devices and other non-regular entries are skipped;
 * the extracted size and the number of entries are bounded (PD_TOOBIG), which stops
 * decompression bombs. Label names must be at most 128 bytes of printable characters.
 *
 * Threads: a pd_dataset is read-only after opening.
 */
#ifndef PD_DATA_H
#define PD_DATA_H

#include "pd.h"

#define PD_DATA_MAX_CLASSES 10000
#define PD_DATA_MAX_IMAGES  (1 << 22)

struct pd_dataset {
    int nclass;
    char **labels; /* sorted */
    int n;
    char **paths; /* n image files */
    int *label;   /* n class indices */
    char *tmpdir; /* set when extracted from an archive; removed by pd_dataset_fini */
};

/* Opens a directory or an archive file. max_bytes bounds an archive's extracted size. */
int pd_dataset_open(const char *path, uint64_t max_bytes, struct pd_dataset *ds, char *msg);

/* Opens an archive held in memory (the server's upload). */
int pd_dataset_open_archive(const void *buf, size_t len, uint64_t max_bytes, struct pd_dataset *ds,
                            char *msg);

void pd_dataset_fini(struct pd_dataset *ds);

#endif
