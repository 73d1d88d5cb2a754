/* Compression cost and size per record, zlib against libdeflate, at gzip levels 1/3/6/9: an NDJSON file
 * compressed in 4 MiB batches (the daemon's default [batch] max_bytes) in one thread, CPU time per record
 * and bytes per record, three rounds. zlib as the daemon's CZlib uses it (deflateInit2, windowBits 16 + 15,
 * memLevel 8); libdeflate's prototypes are declared here, so only its runtime library is needed:
 *
 *   cc -O2 -o /tmp/gzip-levels Benchmarks/gzip-levels/gzip-levels.c -lz -l:libdeflate.so.0
 *   /tmp/gzip-levels records.ndjson        # e.g. two of the bench's part files, cat'ed together
 *
 * Debian 12: zlib1g-dev, libdeflate0 (see BENCHMARKS.md, "The gzip level"). Not built by CI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
struct libdeflate_compressor;
struct libdeflate_compressor *libdeflate_alloc_compressor(int level);
size_t libdeflate_gzip_compress(struct libdeflate_compressor *c, const void *in, size_t in_nbytes, void *out, size_t out_nbytes_avail);
void libdeflate_free_compressor(struct libdeflate_compressor *c);
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
  char *in = malloc(n); fread(in, 1, n, f); fclose(f);
  long records = 0; for (long i = 0; i < n; i++) records += in[i] == '\n';
  size_t batch = 4 << 20; char *out = malloc(batch * 2);
  int levels[] = {1, 3, 6, 9};
  for (int round = 0; round < 3; round++)
  for (int li = 0; li < 4; li++) {
    int level = levels[li];
    /* zlib, gzip wrapper, windowBits 16+15, memLevel 8 (the daemon's CZlib) */
    double t0 = cpu(); size_t total = 0;
    for (long off = 0; off < n; off += batch) {
      size_t len = (n - off < (long)batch) ? n - off : batch;
      z_stream s; memset(&s, 0, sizeof s);
      deflateInit2(&s, level, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY);
      s.next_in = (Bytef *)in + off; s.avail_in = len; s.next_out = (Bytef *)out; s.avail_out = batch * 2;
      deflate(&s, Z_FINISH); total += s.total_out; deflateEnd(&s);
    }
    double tz = cpu() - t0;
    t0 = cpu(); size_t total2 = 0;
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(level);
    for (long off = 0; off < n; off += batch) {
      size_t len = (n - off < (long)batch) ? n - off : batch;
      total2 += libdeflate_gzip_compress(c, in + off, len, out, batch * 2);
    }
    libdeflate_free_compressor(c);
    double td = cpu() - t0;
    printf("round %d level %d  zlib %.3f us/rec %.2f B/rec  libdeflate %.3f us/rec %.2f B/rec\n", round, level,
           tz * 1e6 / records, (double)total / records, td * 1e6 / records, (double)total2 / records);
  }
  return 0;
}
