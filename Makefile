# SPDX-License-Identifier: MIT

# The short way to build, test and install libctx.  Every target drives CMake
# and CTest; nothing here is needed by a project that uses CMake directly.
#
#   make / make build     configure build/ (RelWithDebInfo) once, then build
#   make deps             install the Debian packages the tests need (scripts/deps.sh)
#   make test             install what is missing, build, then run the test suite
#   make demo             install what is missing, build reportd, then play a
#                         budget, a hang-up and a shutdown with two of them
#                         (examples/reportd/demo.sh)
#   make asan             test suite under AddressSanitizer + UBSan (build-asan/)
#   make tsan             test suite under ThreadSanitizer (build-tsan/)
#   make bench            build and run the benchmarks, when bench/ exists
#   make portable         core tests on the portable POSIX backend (build-portable/)
#   make m32              core tests built for i686 with -m32 (build-m32/; gcc-multilib)
#   make musl             core tests built with musl-gcc (build-musl/; musl-tools)
#   make headers          the public headers compile as C11 and C++17, -Werror
#   make format           reformat every C file with clang-format
#   make format-check     fail if any C file is not formatted
#   make install PREFIX=/usr/local
#   make clean            remove every build directory

CMAKE        ?= cmake
CTEST        ?= ctest
CLANG_FORMAT ?= clang-format
BUILD_DIR    ?= build
BUILD_TYPE   ?= RelWithDebInfo
PREFIX       ?= /usr/local
JOBS         ?= $(shell nproc 2>/dev/null || echo 2)
TEST_JOBS    ?= 2

# Sanitizer builds prefer clang and fall back to gcc.
SAN_CC ?= $(shell command -v clang >/dev/null 2>&1 && echo clang || echo gcc)

# ThreadSanitizer in gcc 12 and clang 14 cannot cope with every address-space
# layout that newer kernels hand out ("FATAL: ThreadSanitizer: unexpected
# memory mapping").  Running the suite with address randomization turned off
# avoids that; the personality is inherited by every test ctest starts.
NO_ASLR ?= $(shell a="$$(uname -m)"; setarch "$$a" -R true >/dev/null 2>&1 && echo "setarch $$a -R")

# CI sets CTX_REQUIRE_INTEGRATIONS=ON so that a missing dependency fails the
# build instead of skipping an integration.
CTX_REQUIRE_INTEGRATIONS ?= OFF
COMMON_CMAKE_ARGS = -DCTX_REQUIRE_INTEGRATIONS=$(CTX_REQUIRE_INTEGRATIONS)

SAN_CMAKE_ARGS = -DCMAKE_C_COMPILER=$(SAN_CC) -DCMAKE_BUILD_TYPE=Debug -DCTX_WERROR=ON $(COMMON_CMAKE_ARGS)

# The C sources and headers to format: what git tracks or would track, or
# (outside a git checkout) every *.c and *.h outside the build directories.
LIST_C_FILES = { git ls-files --cached --others --exclude-standard -- '*.c' '*.h' 2>/dev/null \
                 || find . \( -name '.git' -o -name 'build*' \) -prune -o \
                        \( -name '*.c' -o -name '*.h' \) -type f -print; } \
               | while read -r f; do [ -f "$$f" ] && echo "$$f"; done

# $(call configure,DIR,CMAKE-ARGS): configure DIR unless CMake has already
# generated a build system there.
define configure
	@if [ ! -f '$(1)/cmake_install.cmake' ]; then \
	    echo '$(CMAKE) -S . -B $(1) $(2)'; \
	    $(CMAKE) -S . -B '$(1)' $(2); \
	fi
endef

.PHONY: all deps build test demo asan tsan bench format format-check install clean \
        portable m32 musl headers

MAKEFLAGS += --no-print-directory

all: build

deps:
	@scripts/deps.sh test

build:
	$(call configure,$(BUILD_DIR),-DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(COMMON_CMAKE_ARGS))
	$(CMAKE) --build $(BUILD_DIR) -j $(JOBS)

test: deps
	@$(MAKE) build
	$(CTEST) --test-dir $(BUILD_DIR) --output-on-failure -j $(TEST_JOBS)

# The demo builds only what it runs (the library, its integrations and
# reportd), so that a fresh clone plays it in well under a minute.  Without
# libcurl, libmicrohttpd or SQLite it plays the small examples instead.
demo:
	@scripts/deps.sh demo
	$(call configure,$(BUILD_DIR),-DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(COMMON_CMAKE_ARGS))
	@if $(CMAKE) --build $(BUILD_DIR) --target help | grep 'reportd-demo' >/dev/null; then \
	    $(CMAKE) --build $(BUILD_DIR) -j $(JOBS) --target reportd-demo; \
	else \
	    echo 'make demo: reportd needs libcurl, libmicrohttpd and SQLite (scripts/deps.sh demo);'; \
	    echo '           playing the small examples instead.'; \
	    $(CMAKE) --build $(BUILD_DIR) -j $(JOBS) --target demo; \
	fi

asan: export ASAN_OPTIONS := detect_leaks=1
asan: export UBSAN_OPTIONS := print_stacktrace=1:halt_on_error=1
asan:
	$(call configure,build-asan,$(SAN_CMAKE_ARGS) -DCTX_SANITIZE=address)
	$(CMAKE) --build build-asan -j $(JOBS)
	$(CTEST) --test-dir build-asan --output-on-failure -j $(TEST_JOBS)

tsan: export TSAN_OPTIONS := halt_on_error=1:second_deadlock_stack=1
tsan:
	$(call configure,build-tsan,$(SAN_CMAKE_ARGS) -DCTX_SANITIZE=thread)
	$(CMAKE) --build build-tsan -j $(JOBS)
	$(NO_ASLR) $(CTEST) --test-dir build-tsan --output-on-failure -j $(TEST_JOBS)

# The platform builds: the core library and its tests only (no companion
# libraries, examples, benchmarks or manual pages, which the main build
# checks), each in a directory of its own.  docs/platforms.md says what
# each one checks.
CORE_CMAKE_ARGS = -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCTX_WERROR=ON -DCTX_BUILD_INTEGRATIONS=OFF \
                  -DCTX_BUILD_EXAMPLES=OFF -DCTX_BUILD_BENCH=OFF -DCTX_BUILD_MANUAL=OFF

portable:
	$(call configure,build-portable,$(CORE_CMAKE_ARGS) -DCTX_PORTABLE=ON)
	$(CMAKE) --build build-portable -j $(JOBS)
	scripts/check-portable.sh build-portable/libctx.a
	$(CTEST) --test-dir build-portable --output-on-failure -j $(TEST_JOBS)

m32:
	$(call configure,build-m32,$(CORE_CMAKE_ARGS) -DCMAKE_C_FLAGS=-m32)
	$(CMAKE) --build build-m32 -j $(JOBS)
	$(CTEST) --test-dir build-m32 --output-on-failure -j $(TEST_JOBS)

musl:
	$(call configure,build-musl,$(CORE_CMAKE_ARGS) -DCMAKE_C_COMPILER=musl-gcc)
	$(CMAKE) --build build-musl -j $(JOBS)
	$(CTEST) --test-dir build-musl --output-on-failure -j $(TEST_JOBS)

headers:
	$(call configure,$(BUILD_DIR),-DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(COMMON_CMAKE_ARGS))
	BUILD_DIR=$(BUILD_DIR) scripts/check-headers.sh

# The benchmarks' peers (Google Benchmark, Go's database drivers, wrk, hey)
# are in deps.sh's ci list.
bench:
	@scripts/deps.sh ci
	@if [ -f bench/CMakeLists.txt ]; then \
	    set -e; \
	    $(CMAKE) -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE); \
	    $(CMAKE) --build $(BUILD_DIR) -j $(JOBS); \
	    $(CMAKE) --build $(BUILD_DIR) --target bench-report; \
	    $(CMAKE) --build $(BUILD_DIR) --target bench-areas; \
	else \
	    echo 'make bench: there is no bench/ directory yet, so there is nothing to run.'; \
	fi

format:
	@$(LIST_C_FILES) | xargs -r $(CLANG_FORMAT) -i

format-check:
	@$(LIST_C_FILES) | xargs -r $(CLANG_FORMAT) --dry-run --Werror
	@echo 'format-check: every C file is formatted.'

install: build
	$(CMAKE) --install $(BUILD_DIR) --prefix '$(abspath $(PREFIX))'

clean:
	rm -rf '$(BUILD_DIR)' build-asan build-tsan build-werror build-fuzz \
	       build-portable build-m32 build-musl
