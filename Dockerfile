# aai-nginx: the official nginx image with the three aai-nginx modules.
#
#   make image                     builds aai-nginx:<nginx version> and
#                                  aai-nginx:latest (README, "Deploying")
#   docker build -t aai-nginx .    the same with docker alone, on a machine
#                                  that reaches Docker Hub and nginx.org
#
# NGINX_VERSION must be the exact version of the nginx:<version> image the
# modules go into: a module loads only into the nginx it was built against
# (checked at the end of the build).  The default is the current stable
# version of the official image.
ARG NGINX_VERSION=1.30.8

# --- build: the modules, against the nginx.org source of that version
FROM debian:bookworm AS build
ARG NGINX_VERSION
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
       --no-install-recommends gcc make libc6-dev libhiredis-dev \
       librdkafka-dev libcjson-dev libssl-dev libpcre2-dev zlib1g-dev \
       ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# deploy/nginx-src/ holds nginx-<version>.tar.gz when `make image` found it
# elsewhere (Debian's copy, NGINX_TARBALL); otherwise it comes from nginx.org
COPY deploy/nginx-src/ /src/tarballs/
RUN set -e; t=/src/tarballs/nginx-${NGINX_VERSION}.tar.gz; \
    if [ ! -f "$t" ]; then \
        curl -fsSL -o "$t" \
            https://nginx.org/download/nginx-${NGINX_VERSION}.tar.gz; \
    fi; \
    tar -C /src -xzf "$t"; test -f /src/nginx-${NGINX_VERSION}/configure
COPY Makefile config ngx_aai.map *.c *.h /src/aai/
COPY scripts/ /src/aai/scripts/
WORKDIR /src/aai
# the packages are there: skip the Makefile's install step (check-deps)
RUN make -j"$(nproc)" -o check-deps NGINX_SRC=/src/nginx-${NGINX_VERSION} \
        TEST_MODULES= BUILD=/src/build \
    && mkdir /out \
    && cp /src/build/ngx_http_aai_*_module.so /out/ \
    && echo "${NGINX_VERSION}" > /out/aai-nginx.nginx-version

# --- the image: the official nginx image of that version
FROM nginx:${NGINX_VERSION}
ARG NGINX_VERSION
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
       --no-install-recommends librdkafka1 libcjson1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/lib/nginx/modules/
COPY deploy/image/aai-modules.conf /etc/nginx/aai-modules.conf
COPY deploy/image/check-modules /usr/local/bin/aai-check-modules
# fails the build with a clear message when the modules do not fit
RUN aai-check-modules
COPY deploy/image/nginx.conf /etc/nginx/nginx.conf
COPY deploy/image/templates/ /etc/nginx/templates/
COPY deploy/image/15-aai-env.envsh /docker-entrypoint.d/
RUN rm -f /etc/nginx/conf.d/default.conf \
    && mkdir -p /etc/nginx/aai \
    && chmod 755 /docker-entrypoint.d/15-aai-env.envsh

# the configuration by environment (README, "Deploying"); the templates
# render into /etc/nginx/aai/, included by nginx.conf
ENV NGINX_ENVSUBST_OUTPUT_DIR=/etc/nginx/aai \
    AAI_LISTEN=80 \
    AAI_UPSTREAM_SERVERS="127.0.0.1:3000 127.0.0.1:3001 127.0.0.1:3002" \
    AAI_RATELIMIT_REDIS=127.0.0.1:6380 \
    AAI_RATELIMIT_REDIS_PASSWORD= \
    AAI_RATELIMIT_REDIS_USER= \
    AAI_RATELIMIT_SENTINEL_PASSWORD= \
    AAI_RATELIMIT_FALLBACK=local \
    AAI_CACHE_REDIS=127.0.0.1:6379 \
    AAI_CACHE_REDIS_PASSWORD= \
    AAI_CACHE_REDIS_USER= \
    AAI_CACHE_REDIS_DB=1 \
    AAI_REDIS_CONNECT_TIMEOUT=100ms \
    AAI_REDIS_TIMEOUT=50ms \
    AAI_KAFKA_BROKERS=127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094 \
    AAI_KAFKA_CLIENT_ID=aai-nginx \
    AAI_KAFKA_TOPIC=user-events \
    AAI_KAFKA_ABUSE_TOPIC=abuse-events \
    AAI_KAFKA_SECURITY_PROTOCOL= \
    AAI_KAFKA_SASL_MECHANISM=PLAIN \
    AAI_KAFKA_SASL_USERNAME= \
    AAI_KAFKA_SASL_PASSWORD= \
    AAI_METRICS_ALLOW="127.0.0.1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"
