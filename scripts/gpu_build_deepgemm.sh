#!/usr/bin/env bash
# On the GPU machine: build DeepGEMM from the carried sdist (recipe in shared/GPU.md:
# system g++, so the extension uses the system libstdc++; cutlass headers copied into the
# package; the JIT cache in a folder the run controls). Prints the PYTHONPATH entry.
# Usage: source scripts/gpu_build_deepgemm.sh   (sets PYTHONPATH, CUDA_HOME, DG_JIT_CACHE_DIR)
DG_SRC=${DG_SRC:-/tmp/deepgemm-src}
DG_LOG=${DG_LOG:-/tmp/deepgemm-build.log}
if [ ! -f "$DG_SRC/.built" ]; then
    rm -rf "$DG_SRC" && mkdir -p "$DG_SRC"
    tar xzf .carry/deepgemm/deepinfer_gemm-*.tar.gz -C "$DG_SRC" --strip-components=1
    inc="$PWD/.carry/deepgemm/include"
    t0=$(date +%s)
    (cd "$DG_SRC" &&
     CPLUS_INCLUDE_PATH="$inc:$inc/elfutils" CC=/usr/bin/gcc CXX=/usr/bin/g++ \
     LDSHARED="/usr/bin/g++ -shared" DG_FORCE_BUILD=1 MAX_JOBS=16 \
     python3 setup.py build_ext --inplace) > "$DG_LOG" 2>&1 || { tail -30 "$DG_LOG"; return 1 2>/dev/null || exit 1; }
    mkdir -p "$DG_SRC/deep_gemm/include"
    cp -r "$DG_SRC"/third-party/cutlass/include/{cute,cutlass} "$DG_SRC/deep_gemm/include/"
    echo "deep_gemm built in $(( $(date +%s) - t0 )) s" | tee -a "$DG_LOG"
    touch "$DG_SRC/.built"
fi
export CUDA_HOME=/usr/local/cuda
export DG_JIT_CACHE_DIR=${DG_JIT_CACHE_DIR:-/tmp/deepgemm-jit}
export PYTHONPATH="$DG_SRC${PYTHONPATH:+:$PYTHONPATH}"
