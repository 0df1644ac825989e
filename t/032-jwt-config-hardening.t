# Settings that would silently switch a check off fail nginx -t, naming the
# directive: an empty aai_jwt_issuer or aai_jwt_audience (at any level,
# also below one that sets a real value), and an "env:" secret without a
# variable name (aai_jwt_key, aai_ratelimit_redis and aai_cache_redis
# password=env:, aai_kafka_property).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{AAI_JWT_HARDENING_SECRET} = 'aai-hardening-secret-0123456789abcdef';

no_shuffle();
run_tests();

__DATA__

=== TEST 1: aai_jwt_issuer "" fails nginx -t
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_HARDENING_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_issuer "";
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
empty value "" in "aai_jwt_issuer": it would accept a token with any "iss" claim



=== TEST 2: aai_jwt_audience "" fails nginx -t
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_HARDENING_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_audience "";
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
empty value "" in "aai_jwt_audience": it would accept a token with any "aud" claim



=== TEST 3: an empty aai_jwt_issuer below a real one fails nginx -t
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_HARDENING_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_issuer https://idp.example;
    aai_jwt_audience api;
--- config
    location /t {
        aai_jwt_issuer "";
        return 204;
    }
--- must_die
--- error_log
[emerg]
empty value "" in "aai_jwt_issuer"



=== TEST 4: an empty aai_jwt_audience in a server below a real one fails
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_HARDENING_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_audience api;
--- config
    aai_jwt_audience "";
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
empty value "" in "aai_jwt_audience"



=== TEST 5: aai_jwt_key hs256 env: with no variable name fails nginx -t
--- http_config
    aai_jwt_key hs256 env:;
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
no variable name in "env:" in "aai_jwt_key"



=== TEST 6: aai_ratelimit_redis password=env: fails nginx -t
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=env:;
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
no variable name in "password=env:" in "aai_ratelimit_redis"



=== TEST 7: aai_cache_redis password=env: fails nginx -t
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=env:;
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
no variable name in "password=env:" in "aai_cache_redis"



=== TEST 8: aai_kafka_property env: with no variable name fails nginx -t
--- http_config
    aai_kafka_brokers 127.0.0.1:9;
    aai_kafka_property sasl.password env:;
--- config
    location /t { return 204; }
--- must_die
--- error_log
[emerg]
environment variable "" for property "sasl.password" in "aai_kafka_property" is not set



=== TEST 9: a real issuer and audience still work
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_HARDENING_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_issuer https://idp.example;
    aai_jwt_audience api;
--- config
    location /t { return 200 "status=$aai_jwt_status\n"; }
--- request
GET /t
--- response_body
status=NONE
--- no_error_log
[emerg]
