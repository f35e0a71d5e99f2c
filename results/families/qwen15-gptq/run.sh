set -x
cd /work/main
N=16
.venv-llmc/bin/python tools/peer/make_calib_ids.py --tokenizer out/qwen15-hf --text data/calib.txt --nsamples $N --seqlen 512 --seed 0 --out out/calib_qwen15_${N}x512.safetensors
rm -rf out/q15-gptq-w4g128 out/.q15-gptq-w4g128.partial
/usr/bin/time -v target/release/shrink compress --model out/qwen15-hf --method gptq --bits 4 --group-size 128 --calib-ids out/calib_qwen15_${N}x512.safetensors --out out/q15-gptq-w4g128 > /tmp/q15_shrink_gptq.log 2>&1
/usr/bin/time -v .venv-llmc/bin/python tools/peer/llmcompressor_gptq.py --model out/qwen15-hf --group-size 128 --calib-ids out/calib_qwen15_${N}x512.safetensors --out out/peer/llmc-q15-gptq-w4g128 --omp-wait-policy passive > /tmp/q15_llmc_gptq.log 2>&1
