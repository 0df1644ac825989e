# aai-nginx: build, test, demo, sanitizer and benchmark entry points.
#
#   make                  build the three modules against Debian's nginx-dev
#   make NGINX_SRC=DIR    ... against an upstream nginx source tree (builds
#                         that nginx binary too, --with-compat)
#   make test             run the whole suite (starts Redis and Kafka mock)
#   make run              the demo: Redis, Kafka mock, upstream and nginx
#   make asan             build and run the suite under AddressSanitizer
#                         and UndefinedBehaviorSanitizer
#                         (in ASAN_BUILD, default build-asan; with NGINX_SRC
#                         that nginx is instrumented too)
#   make bench            benchmarks (bench/README.md)
#   make chaos            failures under load: reloads, binary upgrade,
#                         Redis, a worker and Kafka killed (bench/chaos/run)
#   make soak             steady load for CHAOS_SOAK_MINUTES (default 30)
#   make fuzz             build the fuzz targets (fuzz/) and run each for
#                         FUZZ_SECONDS seconds (default 60); fails on a crash
#   make conformance      the public HTTP cache test suite against aai_cache
#                         and proxy_cache (CACHE_TESTS=/path/to/cache-tests)
#   make deb              Debian packages of the three modules (in DEB_DIR,
#                         default build-deb), built with dh_nginx
#   make deb-test         installs them into this machine, nginx -t, removes
#   make ops-test         the Prometheus rules and Grafana dashboard against
#                         a real Prometheus scraping the modules, and deb-test
#   make image            the container image aai-nginx:<nginx version> and
#                         aai-nginx:latest (Dockerfile, scripts/image-build)
#   make image-test       build the image and test it against Redis and the
#                         Kafka mock (t/image-test)
#   make lua              after editing lua/*.lua: remake the C headers that
#                         embed the scripts (committed; t/029 and t/059
#                         check them)

SHELL      := /bin/bash
NGINX_SRC  ?= /usr/share/nginx/src
BUILD      ?= build
MODULES    ?= ratelimit cache kafka
TEST_MODULES ?= redistest
# Debian's own hardening flags for its nginx modules
CC_OPT     ?= -g -O2 -fstack-protector-strong -Wformat \
              -Werror=format-security -D_FORTIFY_SOURCE=2
LD_OPT     ?=
TEST_FILES ?= t
PROVE_ARGS ?=

B          := $(abspath $(BUILD))
SRC        := $(abspath $(NGINX_SRC))
TOP        := $(abspath .)
BUILT      := $(MODULES) $(TEST_MODULES)
SO         := $(foreach m,$(BUILT),$(B)/ngx_http_aai_$(m)_module.so)

# The default tree comes with nginx-dev.  On a fresh machine it is not there
# yet when this file is read, and the test below would take the missing tree
# for an upstream one: install the packages first, at parse time, for every
# goal that builds (the first "make test" or "make run" must work).
ifeq ($(NGINX_SRC)$(wildcard $(SRC)),/usr/share/nginx/src)
  ifneq ($(filter-out clean deps check-deps,$(or $(MAKECMDGOALS),all)),)
    $(info nginx-dev is not installed: running scripts/install-deps)
    DEPS_RC := $(shell scripts/install-deps >&2; echo $$?)
    ifneq ($(DEPS_RC),0)
      $(error scripts/install-deps failed (exit $(DEPS_RC)))
    endif
  endif
endif

# Debian's nginx-dev tree carries the configure flags of /usr/sbin/nginx and
# no .c files: only the modules can be built there.  An upstream tree builds
# its own nginx binary, which the tests then run.
ifneq ($(wildcard $(SRC)/conf_flags),)
  CONFIGURE  := . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}"
  MAKE_GOAL  := modules
  NGINX_BIN  ?= /usr/sbin/nginx
else
  CONFIGURE  := $(if $(wildcard $(SRC)/configure),./configure,auto/configure) \
                --with-compat --with-threads --with-http_ssl_module \
                --with-http_stub_status_module --with-debug \
                --prefix=$(B)/prefix
  MAKE_GOAL  :=
  NGINX_BIN  ?= $(B)/nginx
endif

SOURCES := config ngx_aai.map $(wildcard $(TOP)/*.c $(TOP)/*.h)

.PHONY: all build deps test run asan bench chaos soak fuzz conformance clean \
        check-deps FORCE deb deb-test ops-test image image-test lua

all: build

deps:
	@scripts/install-deps

check-deps:
	@scripts/install-deps --check 2>/dev/null || scripts/install-deps

# reconfigure when the list of modules changes, or the nginx tree or the
# compiler or linker options (the same BUILD with another NGINX_SRC would
# otherwise keep building the old configuration)
CONF_ID    := $(BUILT) | $(SRC) | $(CC_OPT) | $(LD_OPT)

$(B)/modules.list: FORCE
	@mkdir -p $(B)
	@echo "$(CONF_ID)" | cmp -s - $@ || echo "$(CONF_ID)" > $@

$(B)/Makefile: config Makefile $(B)/modules.list | check-deps
	@mkdir -p $(B)
	cd $(SRC) && export AAI_MODULES="$(BUILT)" && $(CONFIGURE) \
	    --with-cc-opt="$(CC_OPT)" $(if $(LD_OPT),--with-ld-opt="$(LD_OPT)") \
	    --add-dynamic-module=$(TOP) --builddir=$(B) > $(B)/configure.log \
	    || { cat $(B)/configure.log; exit 1; }

build: $(B)/Makefile
	$(MAKE) -C $(SRC) -f $(B)/Makefile $(MAKE_GOAL)

test: build
	AAI_ASAN=$(AAI_ASAN) \
	TEST_NGINX_BINARY=$(NGINX_BIN) AAI_BUILD=$(B) \
	TEST_NGINX_LOAD_MODULES="$(SO)" \
	    t/run-tests $(PROVE_ARGS) $(TEST_FILES)

run: build
	AAI_BUILD=$(B) NGINX_BIN=$(NGINX_BIN) scripts/demo

# The Debian nginx binary is not instrumented: the modules are, and the
# runtime is preloaded.  Every report fails the run (t/run-tests), and so
# does a leak of ours found when an nginx process exits (t/run-tests says
# how nginx's own never-freed memory is told apart; AAI_LSAN=0 turns the
# leak check off).  With NGINX_SRC the nginx binary is instrumented too,
# and NGX_DEBUG_PALLOC gives every pool allocation its own malloc() there,
# so that an overrun inside a pool block is caught as well.
ASAN_LIB   = $(shell gcc -print-file-name=libasan.so)
ASAN_BUILD ?= build-asan
#
# UndefinedBehaviorSanitizer is on in the same build: -fno-sanitize-recover
# makes its first report end the process; the report goes to nginx's error
# log, where t/compat (and AaiTest, for its own instances) find it and fail
# the block and the run as for ASan's.
ASAN_CC_OPT = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer \
              $(if $(wildcard $(SRC)/conf_flags),,-DNGX_DEBUG_PALLOC=1)

asan:
	$(MAKE) test BUILD=$(ASAN_BUILD) CC_OPT="$(strip $(ASAN_CC_OPT))" \
	    LD_OPT="-fsanitize=address,undefined" AAI_ASAN=$(ASAN_LIB)

bench: build
	scripts/install-deps --bench
	AAI_BUILD=$(B) NGINX_BIN=$(NGINX_BIN) bench/run

conformance: build
	AAI_BUILD=$(B) NGINX_BIN=$(NGINX_BIN) bench/conformance/run

chaos: build
	scripts/install-deps --bench
	AAI_BUILD=$(B) NGINX_BIN=$(NGINX_BIN) bench/chaos/run

soak: build
	scripts/install-deps --bench
	AAI_BUILD=$(B) NGINX_BIN=$(NGINX_BIN) bench/chaos/run soak

# the targets that run module code need nginx's headers and the configured
# build's ngx_auto_config.h (fuzz/Makefile)
fuzz: $(B)/Makefile
	scripts/install-deps --fuzz
	$(MAKE) -C fuzz FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) NGX_SRC=$(SRC) \
	    NGX_BUILD=$(B)

# the Lua scripts, committed as C strings so that every build (the image,
# the Debian packages) takes the sources as they are; the cache's, sent
# whole with every EVAL, without their comments and indentation (-s); the
# part the store and the store in pieces share (lua/cache_shared.lua) put
# before each of them (a+b)
LUA2C_CACHE := scripts/lua2c -s -t t/059-cache-scripts.t

lua:
	scripts/lua2c lua/ratelimit.lua ngx_http_aai_ratelimit_script \
	    lua/ratelimit_library.lua ngx_http_aai_ratelimit_library_end \
	    > ngx_http_aai_ratelimit_lua.h.tmp
	mv ngx_http_aai_ratelimit_lua.h.tmp ngx_http_aai_ratelimit_lua.h
	$(LUA2C_CACHE) \
	    lua/cache_shared.lua+lua/cache_store.lua \
	    ngx_http_aai_cache_store_lua \
	    lua/cache_shared.lua+lua/cache_pieces.lua \
	    ngx_http_aai_cache_pieces_lua \
	    > ngx_http_aai_cache_store_lua.h.tmp
	mv ngx_http_aai_cache_store_lua.h.tmp ngx_http_aai_cache_store_lua.h
	$(LUA2C_CACHE) lua/cache_renew.lua ngx_http_aai_cache_renew_lua \
	    lua/cache_release.lua ngx_http_aai_cache_release_lua \
	    > ngx_http_aai_cache_lock_lua.h.tmp
	mv ngx_http_aai_cache_lock_lua.h.tmp ngx_http_aai_cache_lock_lua.h
	$(LUA2C_CACHE) lua/cache_purge.lua ngx_http_aai_cache_purge_lua \
	    > ngx_http_aai_cache_purge_lua.h.tmp
	mv ngx_http_aai_cache_purge_lua.h.tmp ngx_http_aai_cache_purge_lua.h

DEB_DIR    ?= build-deb

deb:
	scripts/deb $(DEB_DIR)

deb-test: deb
	scripts/deb-test $(DEB_DIR)

# deploy/monitoring: promtool checks and unit tests, then t/ops (a real
# Prometheus scraping nginx during traffic), then the Debian packages
MON        := deploy/monitoring

ops-test: build
	scripts/install-deps --ops
	promtool check config $(MON)/prometheus.yml
	promtool check rules $(MON)/alerts.yml
	promtool test rules $(MON)/alerts.test.yml
	$(MAKE) test TEST_FILES=t/ops
	$(MAKE) deb-test

# NGINX_VERSION=1.x.y, NGINX_TARBALL=FILE: scripts/image-build
image:
	scripts/image-build

image-test:
	t/image-test

clean:
	rm -rf $(B) $(ASAN_BUILD) $(DEB_DIR) t/servroot* t/tmp
