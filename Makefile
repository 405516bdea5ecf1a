# Thin wrapper over CMake for the common commands.
#   make          build build/ckpt, build/libckpt.a, build/libckpt.so
#   make test     install missing Debian packages, build, run every test
#                 (gcc build, then a clang ASan+UBSan build)
#   make demo     the tool at work on example checkpoints
#   make fuzz     libFuzzer on every target for FUZZ_SECONDS each, with its
#                 dictionary (fuzz_file.dict for targets without their own);
#                 new inputs go to build-fuzz/corpus/<target>, crashes to
#                 build-fuzz/artifacts
#   make install  build and install under PREFIX (/usr/local), staged under
#                 DESTDIR when set: bin/ckpt, lib/libckpt.so.0 and libckpt.a,
#                 include/ckpt.h, lib/pkgconfig/ckpt.pc, lib/cmake/ckpt/,
#                 share/man/man1/ckpt.1, share/bash-completion/completions/ckpt
#   make deps     install the Debian packages ckpt needs (idempotent)
#   make torch2   make the Debian 13 chroot with torch 2.6 and safetensors
#                 that the interop tests also run against (scripts/torch2-
#                 chroot.sh; CKPT_TORCH2_ROOT, default /var/cache/ckpt-torch2);
#                 make test uses it when present, and CKPT_TORCH2=1 make test
#                 makes it first and fails without it
#   make bench    build Release (build-bench) and measure ckpt against torch,
#                 numpy and raw I/O; prints a table, writes bench/RESULTS.md
#                 (BENCH_MB=1024 BENCH_REPS=5 BENCH_DIR=/tmp/ckpt-bench), with the
#                 Python package's rows (python/ckpt over build-bench's library);
#                 as root also from a cold page cache, and against torch 2.6
#                 and safetensors when the chroot (make torch2) is built
#   make budget   build Release and run every command on hostile files that
#                 claim or repeat far more than they hold: time and peak
#                 memory of each against the budget in SECURITY.md

MAKEFLAGS += --no-print-directory
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 60
CMAKE_FLAGS ?=
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all build install deps torch2 test test-release test-asan demo fuzz bench budget clean

all: build

deps:
	@sh scripts/install-deps.sh

build:
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build build -j$(JOBS)

install:
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX="$(PREFIX)" $(CMAKE_FLAGS) >/dev/null
	@cmake --build build -j$(JOBS)
	DESTDIR="$(DESTDIR)" cmake --install build

torch2:
	@command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; }
	@sh scripts/torch2-chroot.sh build

test: deps $(if $(filter 1,$(CKPT_TORCH2)),torch2) test-release test-asan
	@sh scripts/torch2-chroot.sh check || echo "note: the torch 2.x interop tests were skipped (no chroot in $$(sh scripts/torch2-chroot.sh path)): CKPT_TORCH2=1 make test makes it"

test-release:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCKPT_WERROR=ON $(CMAKE_FLAGS)
	cmake --build build -j$(JOBS)
	cd build && ctest --output-on-failure -j$(JOBS)

test-asan:
	CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCKPT_SANITIZE=ON -DCKPT_WERROR=ON $(CMAKE_FLAGS)
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j$(JOBS)

demo: deps build
	@sh scripts/demo.sh

fuzz: deps
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCKPT_FUZZ=ON -DCKPT_SANITIZE=ON
	cmake --build build-fuzz -j$(JOBS)
	@mkdir -p build-fuzz/artifacts
	@for src in fuzz/fuzz_*.c; do \
		n=$$(basename $$src .c); t=build-fuzz/fuzz/$$n; \
		[ -x $$t ] || { echo "$$t was not built"; exit 1; }; \
		mkdir -p build-fuzz/corpus/$$n fuzz/corpus/$$n; \
		dict=fuzz/$$n.dict; [ -f $$dict ] || dict=fuzz/fuzz_file.dict; \
		echo "== $$n for $(FUZZ_SECONDS)s with $$dict"; \
		$$t -dict=$$dict -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 \
			-artifact_prefix=build-fuzz/artifacts/$$n- -print_final_stats=1 \
			build-fuzz/corpus/$$n fuzz/corpus/$$n || exit 1; \
	done

bench: deps
	cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build build-bench -j$(JOBS) --target ckpt_cli ckpt_bench ckpt_shared dcp_save
	/usr/bin/python3 bench/run.py --build build-bench
	/usr/bin/python3 bench/dcp_save.py --build build-bench

budget: deps
	@[ -x /usr/bin/time ] || apt-get install -y -qq --no-install-recommends time
	cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build build-bench -j$(JOBS) --target ckpt_cli
	/usr/bin/python3 bench/budget.py --ckpt build-bench/ckpt

clean:
	rm -rf build build-asan build-fuzz
