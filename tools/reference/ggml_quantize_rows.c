// Quantizes f32 rows with llama.cpp's own quantizer (ggml_quantize_chunk in libggml-base), for
// the byte fixtures of shrink's i-quant writers (tools/reference/ggml_quantize_fixture.py runs it).
//
//   ggml_quantize_rows TYPE ROWS COLS INPUT.f32 IMATRIX.f32|- OUT.bin
//
// TYPE is a ggml type name (IQ3_XXS, IQ3_S, IQ2_XS, IQ2_S, ...; ggml_type_name's spelling in
// upper case), INPUT.f32 holds ROWS*COLS little-endian f32 values (row-major), IMATRIX.f32 COLS
// values or "-" for none. OUT.bin gets the quantized rows, ggml_row_size(TYPE, COLS) bytes each.
//
// Build against the llama.cpp tree vendored in llama-cpp-python 0.3.36 (its CMake build of
// libggml-base.so; ggml-quants.c there is compiled without -mfma, so there is no FP contraction):
//
//   L=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp B=/work/llamacpp/build/bin
//   gcc -O2 -o out/ggml_quantize_rows tools/reference/ggml_quantize_rows.c
//       -I$L/ggml/include -L$B -lggml-base -Wl,-rpath,$B     (one line)
#include "ggml.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float * read_f32(const char * path, size_t n) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    float * v = malloc(n * sizeof(float));
    if (fread(v, sizeof(float), n, f) != n) { fprintf(stderr, "%s: short read\n", path); exit(1); }
    fclose(f);
    return v;
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s TYPE ROWS COLS INPUT.f32 IMATRIX.f32|- OUT.bin\n", argv[0]);
        return 2;
    }
    int type = -1;
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * name = ggml_type_name((enum ggml_type) t);
        if (!name) continue;
        char up[64];
        size_t i = 0;
        for (; name[i] && i < sizeof(up) - 1; ++i) up[i] = (char) toupper((unsigned char) name[i]);
        up[i] = 0;
        if (strcmp(up, argv[1]) == 0) { type = t; break; }
    }
    if (type < 0) { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    const int64_t rows = atoll(argv[2]), cols = atoll(argv[3]);
    float * x = read_f32(argv[4], (size_t) (rows * cols));
    float * im = strcmp(argv[5], "-") == 0 ? NULL : read_f32(argv[5], (size_t) cols);
    const size_t row_size = ggml_row_size((enum ggml_type) type, cols);
    void * dst = calloc((size_t) rows, row_size);
    ggml_quantize_init((enum ggml_type) type);
    const size_t n = ggml_quantize_chunk((enum ggml_type) type, x, dst, 0, rows, cols, im);
    FILE * f = fopen(argv[6], "wb");
    if (!f || fwrite(dst, 1, n, f) != n) { perror(argv[6]); return 1; }
    fclose(f);
    fprintf(stderr, "%s: %lld rows x %lld -> %zu bytes%s\n", argv[1], (long long) rows, (long long) cols, n,
            im ? " (imatrix)" : "");
    return 0;
}
