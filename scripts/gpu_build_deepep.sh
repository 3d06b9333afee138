#!/usr/bin/env bash
# On the GPU machine: build DeepEP from the carried source (scripts/fetch_deepep.sh), the
# recipe of shared/GPU.md: NVSHMEM from the nvidia-nvshmem-cu13 package already there, CUDA
# 13's CCCL headers on the include path, the system g++ (the /opt one links libstdc++
# statically). About a minute.
# Usage: source scripts/gpu_build_deepep.sh   (puts the source folder on PYTHONPATH)
DE_SRC=${DE_SRC:-/tmp/deepep-src}
DE_LOG=${DE_LOG:-/tmp/deepep-build.log}
if [ ! -f "$DE_SRC/.built" ]; then
    (cd .carry/deepep && sha256sum -c --quiet SHA256SUMS) ||
        { echo "the carried DeepEP archive does not match .carry/deepep/SHA256SUMS" >&2; return 1 2>/dev/null || exit 1; }
    rm -rf "$DE_SRC" && mkdir -p "$DE_SRC"
    tar xzf .carry/deepep/deepep-*.tar.gz -C "$DE_SRC" --strip-components=1
    t0=$(date +%s)
    (cd "$DE_SRC" &&
     CPLUS_INCLUDE_PATH=/usr/local/cuda/include/cccl CC=/usr/bin/gcc CXX=/usr/bin/g++ \
     LDSHARED="/usr/bin/g++ -shared" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
     python3 setup.py build_ext --inplace) > "$DE_LOG" 2>&1 || { tail -30 "$DE_LOG"; return 1 2>/dev/null || exit 1; }
    echo "deep_ep built in $(( $(date +%s) - t0 )) s" | tee -a "$DE_LOG"
    touch "$DE_SRC/.built"
fi
export PYTHONPATH="$DE_SRC${PYTHONPATH:+:$PYTHONPATH}"
