#!/usr/bin/env bash
# Compile check for the Huber CUDA core (csrc/cuda): builds huber_cuda.cu and
# huber_capi.cu for sm_80 and sm_90 plus compute_90 PTX with `-Xptxas -v`,
# prints the register/spill report per kernel, checks that the object holds
# sm_90 machine code (cuobjdump --list-elf, or a fatbin reader when cuobjdump
# is not installed), that the vectorized kernels' machine code moves 16 bytes
# per load (cuobjdump only), and links the ctypes library. Needs nvcc, not a GPU.
#
# Without nvcc it says so and exits 0, or 1 when FASTCUSTOM_REQUIRE_NVCC=1.
# NVCC=/path/to/nvcc overrides the lookup.
set -euo pipefail
cd "$(dirname "$0")/.."

nvcc_bin=""
for candidate in "${NVCC:-}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  if [[ -n "$candidate" && -x "$candidate" ]]; then nvcc_bin=$candidate; break; fi
done
if [[ -z "$nvcc_bin" ]]; then
  echo "cuda_compile: nvcc not found (not on PATH, no /usr/local/cuda/bin/nvcc): CUDA compile check skipped"
  [[ "${FASTCUSTOM_REQUIRE_NVCC:-0}" == 1 ]] && { echo "cuda_compile: FASTCUSTOM_REQUIRE_NVCC=1: failing"; exit 1; }
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "cuda_compile: $("$nvcc_bin" --version | tail -n 2 | tr '\n' ' ')"

flags=(-std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -Wall --Werror all-warnings
       -gencode arch=compute_80,code=sm_80
       -gencode arch=compute_90,code=sm_90
       -gencode arch=compute_90,code=compute_90)
start=$SECONDS
"$nvcc_bin" "${flags[@]}" -Xptxas -v -c csrc/cuda/huber_cuda.cu -o "$tmp/huber_cuda.o" 2>"$tmp/ptxas.log" \
  || { cat "$tmp/ptxas.log"; echo "cuda_compile: huber_cuda.cu failed to compile"; exit 1; }
"$nvcc_bin" "${flags[@]}" -c csrc/cuda/huber_capi.cu -o "$tmp/huber_capi.o"
"$nvcc_bin" -shared "$tmp/huber_cuda.o" "$tmp/huber_capi.o" -o "$tmp/libfastcustom_huber_cuda.so"
echo "cuda_compile: built in $((SECONDS - start)) s"

# One line per kernel and target: registers, stack frame and spill bytes.
report=$(awk '
  /Compiling entry function/ { fn = $0; sub(/^[^'\'']*'\''/, "", fn); sub(/'\''.*$/, "", fn)
                               arch = $NF; gsub(/'\''/, "", arch) }
  /bytes stack frame/        { frame = $1; st = $5; ld = $9 }
  /Used [0-9]+ registers/    { regs = $0; sub(/^.*Used /, "", regs); sub(/ registers.*$/, "", regs)
                               printf "%-6s regs=%-3s frame=%-3s spill_st=%-3s spill_ld=%-3s %s\n", arch, regs, frame, st, ld, fn }
' "$tmp/ptxas.log")
if command -v c++filt >/dev/null; then report=$(c++filt <<<"$report"); fi
report=$(sed -e 's/fastcustom::gpu::(anonymous namespace):://' -e 's/([A-Za-z_:]*)\([0-9-]\)/\1/g' -e 's/(.*$//' -e 's/ void / /' <<<"$report" \
         | sort -k6,6 -k1,1)
echo "cuda_compile: ptxas report ($(wc -l <<<"$report") kernel builds):"
echo "$report"
spilling=$(grep -v 'spill_st=0 ' <<<"$report" || true)
echo "cuda_compile: kernel builds with spill stores: $(grep -c . <<<"$spilling" || true)"
[[ -z "$spilling" ]] || echo "$spilling"
grep -q 'regs=' <<<"$report" || { echo "cuda_compile: no ptxas report found"; exit 1; }

# The object must carry sm_90 machine code (ELF), not only PTX. With cuobjdump,
# .ci/fatbin_archs.py (which tests/test_cuda_build.py reads fatbins with) must
# list the same entries.
cuobjdump_bin=${CUOBJDUMP:-$(command -v cuobjdump || true)}
[[ -z "$cuobjdump_bin" && -x "$(dirname "$nvcc_bin")/cuobjdump" ]] && cuobjdump_bin="$(dirname "$nvcc_bin")/cuobjdump"
reader=$(python3 .ci/fatbin_archs.py "$tmp/huber_cuda.o" | sort)
if [[ -n "$cuobjdump_bin" ]]; then
  elves=$("$cuobjdump_bin" --list-elf --list-ptx "$tmp/huber_cuda.o")
  listed=$(sed -E 's/^(ELF|PTX) file +[0-9]+: .*\.(sm_[0-9]+[a-z]?)\.(cubin|ptx)$/\1 file: \2/' <<<"$elves" | sort)
  if [[ "$listed" != "$reader" ]]; then
    printf 'cuda_compile: .ci/fatbin_archs.py lists\n%s\nwhere cuobjdump lists\n%s\n' "$reader" "$elves"
    exit 1
  fi
else
  echo "cuda_compile: cuobjdump not found; reading the .nv_fatbin section directly"
  elves=$reader
fi
echo "$elves" | sed 's/^/cuda_compile:   /'
if ! grep -q 'ELF.*sm_90' <<<"$elves"; then
  echo "cuda_compile: no sm_90 machine code in huber_cuda.o"
  exit 1
fi
# nvcc's code generation, read from the machine code (cuobjdump only): every
# kernel that walks aligned data must load 16 bytes at a time (LDG.E.128), and
# the vectorized gradient must store 16 bytes at a time (STG.E.128). Exempt:
# the combine kernels (a few doubles each) and the `..., false>` scalar variants.
if [[ -n "$cuobjdump_bin" ]]; then
  sass=$("$cuobjdump_bin" --dump-sass "$tmp/huber_cuda.o" | (c++filt 2>/dev/null || cat) | awk '
    /code for sm_/ { arch = $NF }
    /Function : /  { fn = $0; sub(/^.*Function : /, "", fn); anon = "(anonymous namespace)::"
                     if (i = index(fn, anon)) fn = substr(fn, i + length(anon))
                     gsub(/\([A-Za-z_:]+\)/, "", fn)  # the (Enum) casts c++filt writes in template arguments
                     sub(/\(.*$/, "", fn); key = arch " " fn; kernels[key] = 1 }
    /LDG\.E\.128/   { loads[key]++ }
    /STG\.E\.128/   { stores[key]++ }
    END {
      for (key in kernels) {
        split(key, part, " "); fn = substr(key, length(part[1]) + 2)
        if (fn ~ /^Combine/ || fn ~ /, false>$/) continue
        checked[part[1]]++
        if (!loads[key]) print "MISSING 16-byte loads:  " key
        if (fn ~ /^PerSampleGradKernel<.*, true>$/ && !stores[key]) print "MISSING 16-byte stores: " key
      }
      for (arch in checked) print arch ": " checked[arch] " vectorized kernels checked"
    }' | sort)
  echo "$sass" | sed 's/^/cuda_compile:   /'
  if grep -q MISSING <<<"$sass" || ! grep -q "sm_90: " <<<"$sass"; then
    echo "cuda_compile: vectorized kernels without 16-byte memory instructions (or no sm_90 SASS read)"
    exit 1
  fi
fi
if command -v nm >/dev/null; then
  symbols=$(nm -D --defined-only "$tmp/libfastcustom_huber_cuda.so" | grep -c ' T fastcustom_huber_' || true)
  echo "cuda_compile: libfastcustom_huber_cuda.so exports $symbols fastcustom_huber_* functions"
  [[ "$symbols" -ge 8 ]] || { echo "cuda_compile: C API symbols missing"; exit 1; }
fi
echo "cuda_compile: OK ($((SECONDS - start)) s)"
