#!/usr/bin/env bash
# Build llama.cpp's reference tools (llama-perplexity, llama-quantize, llama-imatrix, llama-tokenize) from the
# llama.cpp tree vendored in the llama-cpp-python source distribution (PyPI is the only network
# source this project reaches). Usage: tools/reference/build_llamacpp.sh [DIR]  (default out/export/llamacpp)
# Needs gcc/g++; cmake and ninja come from PyPI into DIR/venv if missing. EXTRA_TARGETS="llama-bench"
# adds more tools (llama-bench measures generation tokens/s).
# GGML_NATIVE is OFF on purpose: on this project's machines (AVX-512/AMX CPUs) a -march=native build
# dies with SIGILL; a fixed AVX2/FMA/F16C build runs everywhere the project runs.
set -euo pipefail
DIR=${1:-out/export/llamacpp}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ ! -x "$DIR/venv/bin/cmake" ]; then
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q cmake ninja
fi
export PATH="$DIR/venv/bin:$PATH"
if ! ls "$DIR"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  "$DIR/venv/bin/pip" download --no-deps --no-binary llama-cpp-python llama-cpp-python -d "$DIR"
fi
SRC=$(ls -d "$DIR"/llama_cpp_python-*/ 2>/dev/null | head -1 || true)
if [ -z "$SRC" ]; then
  tar -xzf "$(ls "$DIR"/llama_cpp_python-*.tar.gz | head -1)" -C "$DIR"
  SRC=$(ls -d "$DIR"/llama_cpp_python-*/ | head -1)
fi
LL="$SRC/vendor/llama.cpp"
cmake -S "$LL" -B "$DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF
nice -n 15 cmake --build "$DIR/build" -j "${JOBS:-2}" --target llama-perplexity llama-quantize llama-imatrix llama-tokenize ${EXTRA_TARGETS:-}
ls -la "$DIR/build/bin"
echo "llama.cpp source: $LL"
