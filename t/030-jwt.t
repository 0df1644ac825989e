# aai_jwt_*: JWT verification in ngx_http_aai_ratelimit_module: every
# algorithm and key source, kid choice, exp / nbf with leeway, iss / aud,
# rejected tokens (expired, wrong key or kid, alg=none, HS256 signed with
# the RSA public key, truncated, bad base64url or JSON, duplicate or
# mistyped claims, oversized), token sources in order, $aai_user,
# $aai_jwt_status, $aai_anon_ip, claim variables, aai_jwt_require, the
# per-worker cache of verified tokens, rate-limited logging, and key errors
# that fail nginx -t.  Tokens are signed at test time (t/lib/AaiJwt.pm).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use AaiJwt;
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_JWT_DIR} = jwt_dir();
$ENV{AAI_JWT_TEST_SECRET} = $AaiJwt::Secret;

# one key per algorithm, each from another source; blocks whose
# http_config has no aai_jwt_key get these

our $Keys = <<'_EOC_';
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET kid=h1;
    aai_jwt_key hs384 file=$TEST_NGINX_JWT_DIR/hs.secret;
    aai_jwt_key hs512 aai-test-secret-0123456789abcdef0123456789abcdef0123456789abcdef;
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub kid=r1;
    aai_jwt_key rs384 file=$TEST_NGINX_JWT_DIR/rsa.pkcs1.pub;
    aai_jwt_key rs512 file=$TEST_NGINX_JWT_DIR/rsa.pub;
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/ec256.pub kid=e1;
    aai_jwt_key es384 file=$TEST_NGINX_JWT_DIR/ec384.pub;
_EOC_

our $Sources = <<'_EOC_';
    aai_jwt_token $http_authorization;
    aai_jwt_token $cookie_session;
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    my $http = $block->http_config // '';

    if ($http !~ /aai_jwt_key/ && !defined $block->must_die) {
        $http = $Keys . $Sources . $http;
    }

    $block->set_value('http_config', $http);

    if (!defined $block->config) {
        $block->set_value('config', <<'_EOC_');
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
_EOC_
    }
});

# for --- more_headers eval (evaluated in another package: call as ::name)

sub bearer {
    return 'Authorization: Bearer ' . jwt(@_);
}

sub rsa_pub_pem {
    open my $f, '<', jwt_dir() . '/rsa.pub' or die $!;
    local $/;
    return <$f>;
}

# a token of exactly $len bytes (HS256, sub alice)
sub jwt_of_length {
    my ($len) = @_;
    for my $h (0 .. 3) {
        my $base = length jwt(header => { x => 'y' x $h });
        my $from = int(($len - $base) * 3 / 4) - 8;
        for my $n (($from > 0 ? $from : 0) .. $len) {
            my $t = jwt(header => { x => 'y' x $h },
                        claims => { pad => 'p' x $n });
            return $t if length $t == $len;
            last if length $t > $len;
        }
    }
    die "no token of length $len";
}


# --- the cache of verified tokens and log rate limiting: one nginx -------
# instance kept across requests (master process, one worker)

my ($port, $stop, $prefix) = start_nginx_instance('jwt030', <<"_EOC_");
$Keys
$Sources
    aai_jwt_cache 4;

    server {
        listen \$TEST_NGINX_INSTANCE_PORT;

        location /t {
            return 200 "\$aai_user \$aai_jwt_status\\n";
        }

        location /iss {
            aai_jwt_issuer https://idp.example;
            return 200 "\$aai_user \$aai_jwt_status\\n";
        }

        location /leeway {
            aai_jwt_leeway 1h;
            return 200 "\$aai_user \$aai_jwt_status\\n";
        }
    }
_EOC_

sub get {
    my ($path, $token) = @_;
    my ($st, undef, $body) = http_get($port, $path,
        $token ? { Authorization => "Bearer $token" } : {});
    return "$st $body";
}

sub log_count {
    my ($re) = @_;
    return scalar grep { /$re/ } map { s/\s+\z//r }
                                 file_lines("$prefix/logs/error.log");
}

{
    my $t = jwt(alg => 'RS256', claims => { sub => 'cached-user' });

    is(get('/t', $t), "200 cached-user VALID\n", 'cache: first request');
    is(log_count(qr/aai_jwt: VALID "cached-user"$/), 1,
       'cache: first request verified the signature');
    is(get('/t', $t), "200 cached-user VALID\n", 'cache: second request');
    is(log_count(qr/aai_jwt: VALID "cached-user" \(cached\)/), 1,
       'cache: second request answered from the cache');

    # the same token where the issuer is checked is not a cache hit there

    is(get('/iss', $t), "200  BAD_CLAIM\n",
       'cache: a location with other checks verifies again');
    is(get('/t', $t), "200 cached-user VALID\n",
       'cache: still valid where iss is not checked');

    # the cache honours exp at lookup

    sleep(int(time) + 1.01 - time);
    my $short = jwt(alg => 'ES256', claims => { sub => 'short',
                                                 exp => int(time) + 1 });
    is(get('/t', $short), "200 short VALID\n", 'cache: short-lived token');
    is(get('/t', $short), "200 short VALID\n", 'cache: short-lived, cached');
    sleep(int(time) + 1.05 - time);
    is(get('/t', $short), "200  EXPIRED\n", 'cache: expired while cached');
    is(get('/leeway', $short), "200 short VALID\n",
       'cache: expired entry dropped, verified again with leeway');

    # bounded: 4 entries, least recently used evicted

    my @t = map { jwt(claims => { sub => "lru$_" }) } 1 .. 5;
    get('/t', $_) for @t;
    is(get('/t', $t[4]), "200 lru5 VALID\n", 'lru: most recent');
    is(log_count(qr/aai_jwt: VALID "lru5" \(cached\)/), 1,
       'lru: most recent still cached');
    is(get('/t', $t[0]), "200 lru1 VALID\n", 'lru: oldest');
    is(log_count(qr/aai_jwt: VALID "lru1" \(cached\)/), 0,
       'lru: oldest was evicted');

    # rejected tokens are logged at most 10 times a second per worker

    sleep(int(time) + 1.01 - time);
    my $bad = jwt(alg => 'RS256', key => 'rsa2.key');
    my $before = log_count(qr/token rejected: BAD_SIGNATURE/);
    my $t0 = time;
    get('/t', $bad) for 1 .. 30;
    my $logged = log_count(qr/token rejected: BAD_SIGNATURE/) - $before;
    my $secs = int(time) - int($t0) + 1;
    ok($logged >= 10 && $logged <= 10 * $secs,
       "log rate: $logged lines for 30 rejections in $secs s");
    sleep(int(time) + 1.01 - time);
    get('/t', $bad);
    my $suppressed = qr/token rejected: BAD_SIGNATURE, signature mismatch/
                     . qr/ \(\d+ similar messages suppressed\)/;
    is(log_count(qr/$suppressed/), 1,
       'log rate: the next second reports the suppressed count');

    $stop->();
}


no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: every algorithm, every key source (env:, file=, value, PEM)
--- request eval
[("GET /t") x 9]
--- more_headers eval
[map { ::bearer(alg => $_->[0], header => { kid => $_->[1] },
                claims => { sub => "u-$_->[0]" }) }
 (['HS256', 'h1'], ['HS384'], ['HS512'], ['RS256', 'r1'], ['RS256'],
  ['RS384'], ['RS512'], ['ES256', 'e1'], ['ES384'])]
--- response_body eval
["u-HS256 VALID\n", "u-HS384 VALID\n", "u-HS512 VALID\n", "u-RS256 VALID\n",
 "u-RS256 VALID\n", "u-RS384 VALID\n", "u-RS512 VALID\n", "u-ES256 VALID\n",
 "u-ES384 VALID\n"]
--- no_error_log
[warn]
[error]



=== TEST 2: no token
--- config
    location /t {
        return 200 "[$aai_user] [$aai_jwt_status] [$aai_anon_ip]\n";
    }
--- request
GET /t
--- response_body
[] [NONE] [127.0.0.1]
--- no_error_log
token rejected



=== TEST 3: $aai_anon_ip is empty for a verified caller
--- config
    location /t {
        return 200 "[$aai_user] [$aai_jwt_status] [$aai_anon_ip]\n";
    }
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
[::bearer(), ::bearer(key => 'wrong-secret-0123456789abcdef0123456789')]
--- response_body eval
["[alice] [VALID] []\n", "[] [BAD_SIGNATURE] [127.0.0.1]\n"]



=== TEST 4: expired, and expired within the leeway
--- config
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
    location /leeway {
        aai_jwt_leeway 30s;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- request eval
["GET /t", "GET /leeway", "GET /leeway"]
--- more_headers eval
[::bearer(claims => { exp => time - 10 }),
 ::bearer(claims => { exp => time - 10 }),
 ::bearer(claims => { exp => time - 40 })]
--- response_body eval
[" EXPIRED\n", "alice VALID\n", " EXPIRED\n"]
--- no_error_log
[warn]



=== TEST 4b: an expired token is logged at info
--- config
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(claims => { exp => time - 10 })
--- request
GET /t
--- response_body
 EXPIRED
--- error_log eval
qr/\[info\] .* aai_jwt: token rejected: EXPIRED, "exp" has passed,/
--- no_error_log
[warn]



=== TEST 4c: a token not valid yet is logged at warn (the clocks disagree)
--- config
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(alg => 'ES256', claims => { nbf => time + 30 })
--- request
GET /t
--- response_body
 NOT_YET_VALID
--- error_log eval
qr/\[warn\] .* aai_jwt: token rejected: NOT_YET_VALID, "nbf" is ahead,/



=== TEST 5: not yet valid (nbf), and within the leeway
--- config
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
    location /leeway {
        aai_jwt_leeway 1m;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- request eval
["GET /t", "GET /leeway", "GET /t"]
--- more_headers eval
[::bearer(alg => 'ES256', claims => { nbf => time + 30 }),
 ::bearer(alg => 'ES256', claims => { nbf => time + 30 }),
 ::bearer(alg => 'ES256', claims => { nbf => time - 1 })]
--- response_body eval
[" NOT_YET_VALID\n", "alice VALID\n", "alice VALID\n"]



=== TEST 6: wrong key: RS256 signed by another RSA key
--- more_headers eval
::bearer(alg => 'RS256', key => 'rsa2.key', header => { kid => 'r1' })
--- request
GET /t
--- response_body
 BAD_SIGNATURE
--- error_log
aai_jwt: token rejected: BAD_SIGNATURE, signature mismatch



=== TEST 7: wrong key: HS256 with another secret, ES256 with another key
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
[::bearer(key => 'another-secret-0123456789abcdef0123456789abcdef'),
 ::bearer(alg => 'ES256', key => 'ec256b.key'),
 ::bearer(alg => 'ES256', key => 'ec256b.key', header => { kid => 'e1' })]
--- response_body eval
[" BAD_SIGNATURE\n", " BAD_SIGNATURE\n", " BAD_SIGNATURE\n"]
--- error_log
aai_jwt: token rejected: BAD_SIGNATURE, signature mismatch



=== TEST 8: unknown kid
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
[::bearer(alg => 'RS256', header => { kid => 'r2' }),
 ::bearer(alg => 'ES256', header => { kid => 'nope' })]
--- response_body eval
[" UNKNOWN_KEY\n", " UNKNOWN_KEY\n"]
--- error_log
aai_jwt: token rejected: UNKNOWN_KEY, unknown kid



=== TEST 9: a kid chooses its key; an unknown kid falls back to keys without kid
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa2.pub kid=old;
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub kid=new;
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/ec256.pub;
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
[::bearer(alg => 'RS256', key => 'rsa2.key', header => { kid => 'old' }),
 ::bearer(alg => 'RS256', key => 'rsa.key', header => { kid => 'new' }),
 ::bearer(alg => 'RS256', key => 'rsa.key', header => { kid => 'old' }),
 ::bearer(alg => 'RS256', key => 'rsa.key'),
 ::bearer(alg => 'ES256', header => { kid => 'other' })]
--- response_body eval
["alice VALID\n", "alice VALID\n", " BAD_SIGNATURE\n", "alice VALID\n",
 "alice VALID\n"]



=== TEST 10: alg=none, with and without a signature
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
['Authorization: Bearer ' . ::b64url('{"alg":"none","typ":"JWT"}') . '.'
     . ::b64url('{"sub":"admin"}') . '.',
 'Authorization: Bearer ' . ::b64url('{"alg":"none"}') . '.'
     . ::b64url('{"sub":"admin"}') . '.' . ::b64url('x'),
 'Authorization: Bearer ' . ::b64url('{"alg":"None"}') . '.'
     . ::b64url('{"sub":"admin"}') . '.' . ::b64url('x')]
--- response_body eval
[" BAD_SIGNATURE\n", " BAD_SIGNATURE\n", " BAD_SIGNATURE\n"]
--- error_log eval
qr/aai_jwt: token rejected: BAD_SIGNATURE, unsupported alg/



=== TEST 11: HS256 signed with the RSA public key (algorithm confusion)
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub kid=r1;
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub;
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
[::bearer(alg => 'HS256', key => ::rsa_pub_pem()),
 ::bearer(alg => 'HS256', key => ::rsa_pub_pem(), header => { kid => 'r1' }),
 ::bearer(alg => 'RS256', header => { kid => 'r1' })]
--- response_body eval
[" BAD_SIGNATURE\n", " BAD_SIGNATURE\n", "alice VALID\n"]



=== TEST 11b: HS256 with the RSA public key and no kid: no HMAC key at all
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub;
--- more_headers eval
::bearer(alg => 'HS256', key => ::rsa_pub_pem())
--- request
GET /t
--- response_body
 BAD_SIGNATURE
--- error_log
aai_jwt: token rejected: BAD_SIGNATURE, no key for the alg



=== TEST 11c: HS256 with the RSA public key naming the RSA key's kid
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa.pub kid=r1;
--- more_headers eval
::bearer(alg => 'HS256', key => ::rsa_pub_pem(), header => { kid => 'r1' })
--- request
GET /t
--- response_body
 BAD_SIGNATURE
--- error_log
aai_jwt: token rejected: BAD_SIGNATURE, alg does not match the kid's key



=== TEST 12: alg names are exact: lower case and unsupported ones fail
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
[::bearer(header => { alg => 'hs256' }, sign_alg => 'HS256'),
 ::bearer(header => { alg => 'PS256' }, sign_alg => 'RS256')]
--- response_body eval
[" BAD_SIGNATURE\n", " BAD_SIGNATURE\n"]



=== TEST 13: truncated tokens
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t"]
--- more_headers eval
my $t = ::jwt(alg => 'RS256');
my ($h, $p, $s) = split /\./, $t;
["Authorization: Bearer $h.$p." . substr($s, 0, 340),
 "Authorization: Bearer $h.$p",
 "Authorization: Bearer $h.$p.",
 "Authorization: Bearer $h"]
--- response_body eval
[" BAD_SIGNATURE\n", " MALFORMED\n", " BAD_SIGNATURE\n", " MALFORMED\n"]



=== TEST 14: bad base64url: other alphabet, padding, stray bits
--- request eval
[("GET /t") x 4]
--- more_headers eval
my ($h, $p, $s) = split /\./, ::jwt();
my $alpha = CORE::join '', 'A' .. 'Z', 'a' .. 'z', 0 .. 9, '-', '_';
my $odd = ::b64url('{"sub":"alice"} ');    # 16 bytes: 4 unused bits
substr($odd, -1) = substr($alpha, index($alpha, substr($odd, -1)) | 1, 1);
["Authorization: Bearer $h.$p.$s=",
 "Authorization: Bearer $h.$p.${s}+/",
 "Authorization: Bearer $h.$p*.$s",
 "Authorization: Bearer $h.$odd.$s"]
--- response_body eval
[" MALFORMED\n", " MALFORMED\n", " MALFORMED\n", " MALFORMED\n"]
--- error_log
aai_jwt: token rejected: MALFORMED, bad base64url



=== TEST 15: bad JSON in the header and (signed) in the payload
--- request eval
[("GET /t") x 4]
--- more_headers eval
[::bearer(raw_header => '{"alg":"HS256",'),
 ::bearer(raw_header => '["HS256"]'),
 ::bearer(raw_payload => '{"sub":"alice"'),
 ::bearer(raw_payload => '{"sub":"alice"} x')]
--- response_body eval
[" MALFORMED\n", " MALFORMED\n", " MALFORMED\n", " MALFORMED\n"]
--- error_log eval
qr/token rejected: MALFORMED, (bad JSON|JSON not an object),/



=== TEST 16: duplicate claims and header members, NUL in strings
--- request eval
[("GET /t") x 4]
--- more_headers eval
[::bearer(raw_payload => '{"sub":"bob","sub":"admin"}'),
 ::bearer(raw_payload => '{"sub":"bob","\u0073ub":"admin"}'),
 ::bearer(raw_header => '{"alg":"HS256","alg":"none"}'),
 ::bearer(raw_payload => '{"sub":"admin\u0000bob"}')]
--- response_body eval
[" MALFORMED\n", " MALFORMED\n", " MALFORMED\n", " MALFORMED\n"]
--- error_log eval
qr/token rejected: MALFORMED, (duplicate JSON member|NUL in JSON),/



=== TEST 17: mistyped claims are MALFORMED, a missing sub is BAD_CLAIM
--- request eval
[("GET /t") x 6]
--- more_headers eval
[::bearer(claims => { sub => 42 }),
 ::bearer(claims => { iss => ['x'] }),
 ::bearer(claims => { exp => '' . (time + 60) }),
 ::bearer(claims => { nbf => JSON::PP::true }),
 ::bearer(claims => { sub => undef }),
 ::bearer(claims => { sub => '' })]
--- response_body eval
[" MALFORMED\n", " MALFORMED\n", " MALFORMED\n", " MALFORMED\n",
 " BAD_CLAIM\n", " BAD_CLAIM\n"]



=== TEST 18: a token at the 8192-byte bound verifies, one byte more does not
--- config
    large_client_header_buffers 4 32k;
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- more_headers eval
["Authorization: Bearer " . ::jwt_of_length(8192),
 "Authorization: Bearer " . ::jwt_of_length(8193),
 "Authorization: Bearer " . ::jwt(claims => { pad => 'x' x 20000 })]
--- response_body eval
["alice VALID\n", " MALFORMED\n", " MALFORMED\n"]



=== TEST 19: issuer and audience checks
--- config
    location /t {
        aai_jwt_issuer https://idp.example;
        aai_jwt_audience api;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- request eval
[("GET /t") x 6]
--- more_headers eval
[::bearer(claims => { iss => 'https://idp.example', aud => 'api' }),
 ::bearer(claims => { iss => 'https://idp.example', aud => ['web', 'api'] }),
 ::bearer(claims => { iss => 'https://evil.example', aud => 'api' }),
 ::bearer(claims => { iss => 'https://idp.example', aud => 'web' }),
 ::bearer(claims => { aud => 'api' }),
 ::bearer(claims => { iss => 'https://idp.example' })]
--- response_body eval
["alice VALID\n", "alice VALID\n", " BAD_CLAIM\n", " BAD_CLAIM\n",
 " BAD_CLAIM\n", " BAD_CLAIM\n"]



=== TEST 20: claims as variables: strings, numbers, booleans, JSON
--- http_config
    aai_jwt_claim $jwt_tenant tenant;
    aai_jwt_claim $jwt_roles roles;
    aai_jwt_claim $jwt_n n;
    aai_jwt_claim $jwt_f f;
    aai_jwt_claim $jwt_admin admin;
    aai_jwt_claim $jwt_obj obj;
    aai_jwt_claim $jwt_null nothing;
    aai_jwt_claim $jwt_missing missing;
    aai_jwt_claim $jwt_sub sub;
--- config
    location /t {
        return 200 "$jwt_tenant|$jwt_roles|$jwt_n|$jwt_f|$jwt_admin|$jwt_obj|$jwt_null|$jwt_missing|$jwt_sub\n";
    }
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
[::bearer(raw_payload => '{"sub":"alice","tenant":"acme \u00e9",'
     . '"roles":["admin","dev"],"n":1700000000,"f":1.5,"admin":true,'
     . '"obj":{"a":[1,null]},"nothing":null}'),
 ::bearer(claims => { tenant => 'acme' }, key => 'wrong-secret-0123456789abcdef')]
--- response_body eval
["acme \xc3\xa9|[\"admin\",\"dev\"]|1700000000|1.5|true|{\"a\":[1,null]}|null||alice\n",
 "||||||||\n"]



=== TEST 21: token sources in order: bearer header, then cookie
--- request eval
[("GET /t") x 6]
--- more_headers eval
[::bearer(claims => { sub => 'hdr' }) . "\nCookie: session="
     . ::jwt(claims => { sub => 'ck' }),
 "Cookie: a=b; session=" . ::jwt(claims => { sub => 'ck' }),
 "Authorization: Basic Ym9iOnNlY3JldA==\nCookie: session="
     . ::jwt(claims => { sub => 'ck' }),
 "Authorization: bEaReR  " . ::jwt(claims => { sub => 'mixed' }),
 "Authorization: Bearer x.y.z\nCookie: session="
     . ::jwt(claims => { sub => 'ck' }),
 "Authorization: Basic Ym9iOnNlY3JldA=="]
--- response_body eval
["hdr VALID\n", "ck VALID\n", "ck VALID\n", "mixed VALID\n",
 " MALFORMED\n", " NONE\n"]



=== TEST 22: without aai_jwt_token the Authorization header is used
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET;
--- request eval
["GET /t", "GET /t"]
--- more_headers eval
[::bearer(), "Cookie: session=" . ::jwt()]
--- response_body eval
["alice VALID\n", " NONE\n"]



=== TEST 23: a location with its own keys replaces the inherited ones
--- config
    location /t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
    location /rsa2 {
        aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa2.pub;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- request eval
["GET /t", "GET /rsa2", "GET /t", "GET /rsa2"]
--- more_headers eval
[::bearer(alg => 'RS256', key => 'rsa2.key'),
 ::bearer(alg => 'RS256', key => 'rsa2.key'),
 ::bearer(),
 ::bearer()]
--- response_body eval
[" BAD_SIGNATURE\n", "alice VALID\n", "alice VALID\n", " BAD_SIGNATURE\n"]



=== TEST 24: verified once per request, whatever evaluates the variables
--- config
    location /t {
        set $u $aai_user;
        rewrite ^ /t2 last;
    }
    location /t2 {
        return 200 "$aai_user $u $aai_jwt_status [$aai_anon_ip]\n";
    }
--- more_headers eval
::bearer(alg => 'ES384', claims => { sub => 'once' })
--- request
GET /t
--- response_body
once once VALID []
--- grep_error_log eval
qr/aai_jwt: VALID "\w+"( \(cached\))?/
--- grep_error_log_out
aai_jwt: VALID "once"



=== TEST 25: kept across internal redirects where the checks are the same
--- config
    location /t {
        set $u $aai_user;
        try_files /nowhere @t;
    }
    location @t {
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(alg => 'ES384', claims => { sub => 'kept' })
--- request
GET /t
--- response_body
kept VALID
--- grep_error_log eval
qr/aai_jwt: VALID "\w+"( \(cached\))?/
--- grep_error_log_out
aai_jwt: VALID "kept"



=== TEST 25b: other checks after a redirect: evaluated again, from the cache
--- config
    location /t {
        set $u $aai_user;
        try_files /nowhere @t;
    }
    location @t {
        aai_jwt_leeway 10s;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(alg => 'ES384', claims => { sub => 'twice' })
--- request
GET /t
--- response_body
twice VALID
--- grep_error_log eval
qr/aai_jwt: VALID "\w+"( \(cached\))?/
--- grep_error_log_out
aai_jwt: VALID "twice"
aai_jwt: VALID "twice" (cached)



=== TEST 25c: aai_jwt_cache 0 disables the cache
--- http_config
    aai_jwt_cache 0;
--- config
    location /t {
        set $u $aai_user;
        try_files /nowhere @t;
    }
    location @t {
        aai_jwt_leeway 10s;
        return 200 "$aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(claims => { sub => 'nocache' })
--- request
GET /t
--- response_body
nocache VALID
--- grep_error_log eval
qr/aai_jwt: VALID "\w+"( \(cached\))?/
--- grep_error_log_out
aai_jwt: VALID "nocache"
aai_jwt: VALID "nocache"



=== TEST 25d: a redirect to other keys verifies again
--- config
    location /t {
        set $u $aai_user;
        try_files /nowhere @t;
    }
    location @t {
        aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa2.pub;
        return 200 "[$u] $aai_user $aai_jwt_status\n";
    }
--- more_headers eval
::bearer(alg => 'RS256', claims => { sub => 'moved' })
--- request
GET /t
--- response_body
[moved]  BAD_SIGNATURE



=== TEST 26: aai_jwt_require: 401 with WWW-Authenticate unless verified
--- config
    location /p/ {
        aai_jwt_require on;
        add_header X-User $aai_user;
    }
    location /open/ {
    }
--- user_files
>>> p/index.html
protected
>>> open/index.html
open
--- request eval
["GET /p/", "GET /p/", "GET /p/", "GET /open/"]
--- more_headers eval
["", "Authorization: Bearer x.y.z",
 ::bearer(alg => 'RS512', claims => { sub => 'carol' }), ""]
--- error_code eval
[401, 401, 200, 200]
--- response_headers eval
["WWW-Authenticate: Bearer", "WWW-Authenticate: Bearer error=\"invalid_token\"",
 "X-User: carol", "!WWW-Authenticate"]
--- response_body_like eval
["401", "401", "protected", "open"]



=== TEST 27: a key file that is not a key fails nginx -t
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/bad.pem;
--- must_die
--- error_log eval
[qr/invalid key file ".*\/bad\.pem" in "aai_jwt_key": no public key/,
 "[emerg]"]



=== TEST 28: a missing key file fails nginx -t
--- http_config
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/missing.pem;
--- must_die
--- error_log eval
[qr/cannot open key file ".*\/missing\.pem" in "aai_jwt_key"/,
 "[emerg]"]



=== TEST 29: key of the wrong type or size fails nginx -t
--- http_config
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/rsa.pub;
--- must_die
--- error_log eval
[qr/invalid key file ".*\/rsa\.pub" in "aai_jwt_key": not an EC key/,
 "[emerg]"]



=== TEST 30: an EC key on the wrong curve fails nginx -t
--- http_config
    aai_jwt_key es256 file=$TEST_NGINX_JWT_DIR/ec384.pub;
--- must_die
--- error_log eval
[qr/invalid key file ".*\/ec384\.pub" in "aai_jwt_key": es256 needs a P-256 key/,
 "[emerg]"]



=== TEST 31: an RSA key under 2048 bits fails nginx -t
--- http_config
    aai_jwt_key rs256 file=$TEST_NGINX_JWT_DIR/rsa1024.pub;
--- must_die
--- error_log eval
[qr/invalid key file ".*\/rsa1024\.pub" in "aai_jwt_key": RSA key shorter than 2048 bits/,
 "[emerg]"]



=== TEST 32: an unset env: secret fails nginx -t
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_NOT_SET_ANYWHERE;
--- must_die
--- error_log
[emerg]
environment variable "AAI_JWT_NOT_SET_ANYWHERE" is not set or empty in "aai_jwt_key"



=== TEST 33: empty secret file fails nginx -t
--- http_config
    aai_jwt_key hs384 file=$TEST_NGINX_JWT_DIR/empty.secret;
--- must_die
--- error_log eval
[qr/empty secret in ".*\/empty\.secret" in "aai_jwt_key"/,
 "[emerg]"]



=== TEST 34: an unknown algorithm fails nginx -t
--- http_config
    aai_jwt_key ps256 file=$TEST_NGINX_JWT_DIR/rsa.pub;
--- must_die
--- error_log
[emerg]
invalid algorithm "ps256" in "aai_jwt_key"



=== TEST 35: a public key needs file=
--- http_config
    aai_jwt_key rs256 $TEST_NGINX_JWT_DIR/rsa.pub;
--- must_die
--- error_log
[emerg]
"aai_jwt_key" needs file=PATH for a public key



=== TEST 36: bad values of the other directives fail nginx -t
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET;
    aai_jwt_leeway soon;
--- must_die
--- error_log
[emerg]
invalid leeway "soon" in "aai_jwt_leeway"



=== TEST 37: aai_jwt_claim only at http level
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET;
--- config
    location /t {
        aai_jwt_claim $jwt_x x;
    }
--- must_die
--- error_log
[emerg]
"aai_jwt_claim" directive is not allowed here



=== TEST 38: aai_jwt_cache takes a number of entries
--- http_config
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET;
    aai_jwt_cache lots;
--- must_die
--- error_log
[emerg]
invalid cache size "lots" in "aai_jwt_cache"
