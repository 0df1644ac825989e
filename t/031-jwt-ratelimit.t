# Rate limiting keyed on the verified JWT subject: a per-user zone on
# $aai_user beside an anonymous zone on $aai_anon_ip.  A client cannot
# escape its quota by changing a plain header, minting a new token for the
# same subject, or forging a token for someone else; unverified traffic is
# limited per address.  Real redis of t/run-tests.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use AaiJwt;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_JWT_DIR} = jwt_dir();

sub bearer {
    return 'Authorization: Bearer ' . jwt(@_);
}

add_block_preprocessor(sub {
    my $block = shift;

    redis_flushdb();

    $block->set_value('http_config', <<'_EOC_' . ($block->http_config // ''))
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                        timeout=2s;

    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub;
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/ec256.pub;
    aai_jwt_token $http_authorization;
    aai_jwt_token $cookie_session;

    aai_ratelimit_zone user key=$aai_user rate=3r/m;
    aai_ratelimit_zone anon key=$aai_anon_ip rate=2r/m;
_EOC_
        unless defined $block->http_config && $block->http_config =~ /zone/;

    $block->set_value('config', <<'_EOC_') unless defined $block->config;
    location /t {
        aai_ratelimit user;
        aai_ratelimit anon;
        add_header X-User $aai_user always;
        add_header X-JWT $aai_jwt_status always;
        empty_gif;
    }
_EOC_
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a verified user has the user quota, not the anonymous one
--- request eval
[("GET /t") x 4]
--- more_headers eval
[(::bearer(alg => 'RS256', claims => { sub => 'alice' })) x 4]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
[("X-User: alice") x 4]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:user:alice'), 3, 'three admissions for alice');
is(redis_cmd('EXISTS', 'aai:rl:anon:127.0.0.1'), 0,
   'a verified user spends nothing of the anonymous quota');



=== TEST 2: a new token, a cookie or another header: still the same quota
--- request eval
[("GET /t") x 5]
--- more_headers eval
[::bearer(alg => 'RS256', claims => { sub => 'alice' }),
 ::bearer(alg => 'ES256', claims => { sub => 'alice', jti => 'x1' }),
 "Cookie: session=" . ::jwt(alg => 'ES256', claims => { sub => 'alice' }),
 ::bearer(alg => 'RS256', claims => { sub => 'alice', iat => 1 })
     . "\nX-User-Id: somebody-else\nX-Forwarded-For: 10.9.8.7",
 ::bearer(alg => 'ES256', claims => { sub => 'alice', n => 2 })
     . "\nX-User-Id: another-one"]
--- error_code eval
[200, 200, 200, 429, 429]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:user:alice'), 3, 'one quota for alice');
is(redis_cmd('EXISTS', 'aai:rl:user:somebody-else'), 0,
   'a plain header is not an identity');



=== TEST 3: users are limited independently
--- request eval
[("GET /t") x 6]
--- more_headers eval
[(::bearer(alg => 'RS256', claims => { sub => 'alice' })) x 4,
 (::bearer(alg => 'ES256', claims => { sub => 'bob' })) x 2]
--- error_code eval
[200, 200, 200, 429, 200, 200]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:user:bob'), 2, 'bob has his own quota');



=== TEST 4: anonymous callers share the quota of their address
--- request eval
[("GET /t") x 4]
--- more_headers eval
["", "X-User-Id: alice", "Cookie: session=nothing", "X-User-Id: bob"]
--- error_code eval
[200, 200, 429, 429]
--- response_headers eval
["X-JWT: NONE", "X-JWT: NONE", "X-JWT: MALFORMED", "X-JWT: NONE"]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:anon:127.0.0.1'), 2,
   'two anonymous admissions for 127.0.0.1');



=== TEST 5: forged, expired and wrong-key tokens are anonymous
--- request eval
[("GET /t") x 5]
--- more_headers eval
[::bearer(alg => 'RS256', key => 'rsa2.key', claims => { sub => 'bob' }),
 ::bearer(alg => 'RS256', claims => { sub => 'bob', exp => time - 60 }),
 'Authorization: Bearer ' . ::b64url('{"alg":"none"}') . '.'
     . ::b64url('{"sub":"bob"}') . '.',
 ::bearer(alg => 'HS256', key => 'guess', claims => { sub => 'bob' }),
 ::bearer(alg => 'ES256', claims => { sub => 'bob' })]
--- error_code eval
[200, 200, 429, 429, 200]
--- response_headers eval
["X-JWT: BAD_SIGNATURE", "X-JWT: EXPIRED", "X-JWT: BAD_SIGNATURE",
 "X-JWT: BAD_SIGNATURE", "X-User: bob"]
--- aai_after
is(redis_cmd('LLEN', 'aai:rl:user:bob'), 1,
   'only the verified request counted for bob');
is(redis_cmd('LLEN', 'aai:rl:anon:127.0.0.1'), 2,
   'the others counted for the address');



=== TEST 6: an anonymous client over its quota gets nothing by forging
--- request eval
[("GET /t") x 4]
--- more_headers eval
["", "",
 ::bearer(alg => 'RS256', key => 'rsa2.key', claims => { sub => 'fresh' }),
 ::bearer(alg => 'RS256', claims => { sub => 'fresh' })]
--- error_code eval
[200, 200, 429, 200]
--- aai_after
is(redis_cmd('EXISTS', 'aai:rl:user:fresh'), 1,
   'only the real token opened a user quota');
