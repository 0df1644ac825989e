# ngx_http_aai_cache_module: hits served from Redis, freshness sources,
# RFC 9111 refusals, Vary, HEAD, large and chunked bodies byte-exact,
# over-size bodies, bypass / no_store, Cache-Status and $aai_cache_status,
# an entry shared by two nginx instances, metrics.
#
# The "app" is a server block of the same nginx (or an extra instance) that
# logs every request it serves to logs/app.log: app_count() counts there.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Digest::MD5 qw( md5_hex );
use Digest::SHA ();
use File::Path qw( make_path );
use Time::HiRes qw( sleep time );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_APP_PORT} = free_port();
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

# bodies the app serves from files: 5 MB and 300 KB of binary data

my $data = server_root() . '-data050';
make_path($data);
$ENV{TEST_NGINX_DATA_DIR} = $data;

sub bytes {
    my ($n, $seed) = @_;
    my $s = join '', map { Digest::SHA::sha256("$seed$_") } 0 .. $n / 32;
    return substr($s, 0, $n);
}

our %Files = (
    'big.bin'   => bytes(5 * 1024 * 1024, 'big'),
    'mid.bin'   => bytes(300 * 1024, 'mid'),
    'small.bin' => bytes(2000, 'small'),
);

for my $f (keys %Files) {
    open my $out, '>', "$data/$f" or die "$data/$f: $!";
    binmode $out;
    print $out $Files{$f};
    close $out;
}

# lines of a log matching $re, once their number has not changed for 100 ms
# (an app in another process writes its log line just after its response)
sub count_lines {
    my ($file, $re) = @_;
    my ($n, $last, $since) = (-1, -1, time);
    my $deadline = time + 2;
    while (time < $deadline) {
        $n = grep { /$re/ } file_lines($file);
        $since = time if $n != $last;
        $last = $n;
        last if time - $since >= 0.1;
        sleep 0.02;
    }
    return $n;
}

sub app_count {
    my $re = shift;
    return count_lines(server_root() . '/logs/app.log', $re);
}


# --- one entry shared by two nginx instances; expiry ----------------------

{
    my ($app_port, $app_stop, $app_prefix) = start_nginx_instance('c050app',
                                                                 <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location / {
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=$arg_ttl";
            return 200 "shared $uri\n";
        }
    }
_EOC_

    my $front = <<"_EOC_";
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=3s;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / {
            aai_cache on;
            add_header X-Status \$aai_cache_status;
            proxy_pass http://127.0.0.1:$app_port;
        }
    }
_EOC_

    my ($a_port, $a_stop, $a_prefix) = start_nginx_instance('c050a', $front);
    my ($b_port, $b_stop, $b_prefix) = start_nginx_instance('c050b', $front);

    redis_flushdb();

    my $count = sub {
        count_lines("$app_prefix/logs/access.log", shift);
    };

    # an entry is stored after its response has gone: wait for it in Redis
    # before asking the other instance
    my $key = sub { 'aai:c:' . Digest::SHA::sha256_hex('httpGETlocalhost'
                                                       . shift) };
    my $wait_key = sub {
        my ($uri, $want) = @_;
        for (1 .. 150) {
            return if (redis_cmd('EXISTS', $key->($uri)) ? 1 : 0) == $want;
            select undef, undef, undef, 0.02;
        }
    };

    my ($st1, $h1, $b1) = http_get($a_port, '/s?ttl=60');
    $wait_key->('/s?ttl=60', 1);
    my ($st2, $h2, $b2) = http_get($b_port, '/s?ttl=60');
    is("$st1 $h1->{'x-status'} $b1", "200 MISS shared /s\n",
       'shared: instance a misses');
    is("$st2 $h2->{'x-status'} $b2", "200 HIT shared /s\n",
       'shared: instance b hits the entry a stored');
    is($h2->{'x-app-id'}, $h1->{'x-app-id'}, 'shared: the same response');
    is($count->(qr{GET /s\?ttl=60 }), 1, 'shared: the upstream saw one');

    # expiry: max-age=1 -> gone from Redis after a second, a miss again

    my @s;
    push @s, (http_get($a_port, '/e?ttl=1'))[1]->{'x-status'};
    $wait_key->('/e?ttl=1', 1);
    push @s, (http_get($b_port, '/e?ttl=1'))[1]->{'x-status'};
    my $pttl = redis_cmd('PTTL', 'aai:c:' . Digest::SHA::sha256_hex(
                                          'httpGETlocalhost/e?ttl=1'));
    ok($pttl > 0 && $pttl <= 1000, "expiry: PX is the freshness ($pttl)");
    $wait_key->('/e?ttl=1', 0);
    push @s, (http_get($b_port, '/e?ttl=1'))[1]->{'x-status'};
    $wait_key->('/e?ttl=1', 1);
    push @s, (http_get($a_port, '/e?ttl=1'))[1]->{'x-status'};
    is("@s", 'MISS HIT MISS HIT', 'expiry: a miss once the ttl has passed');
    is($count->(qr{GET /e\?ttl=1 }), 2, 'expiry: the upstream saw two');

    for my $p ($a_prefix, $b_prefix) {
        my @bad = grep { /\[(?:alert|crit|emerg|error)\]|exited on signal/ }
                  file_lines("$p/logs/error.log");
        is(scalar @bad, 0, "no error in $p") or diag(@bad);
    }

    $a_stop->();
    $b_stop->();
    $app_stop->();
}


add_block_preprocessor(sub {
    redis_flushdb();
});

# 2 s: what these blocks test is not the timeout (t/052 is about that), and
# storing 5 MB within the 100 ms default fails on a loaded machine
our $HttpConfig = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                    timeout=2s;

    upstream app {
        server 127.0.0.1:$TEST_NGINX_APP_PORT;
        keepalive 4;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_APP_PORT;
        access_log logs/app.log;
        default_type text/plain;

        location /app/ {
            add_header X-App-Id $request_id always;
            add_header Cache-Control "max-age=60";
            return 200 "app $uri\n";
        }

        location /app/plain/ {
            add_header X-App-Id $request_id;
            return 200 "plain $uri\n";
        }

        location /app/s-maxage {
            add_header Cache-Control "max-age=5, s-maxage=30";
            return 200 "s-maxage\n";
        }

        location /app/xae {
            add_header X-Accel-Expires 20;
            add_header Cache-Control "no-cache";
            return 200 "xae\n";
        }

        location /app/xae-at {
            add_header X-Accel-Expires "@4102444800";
            return 200 "xae-at\n";
        }

        location /app/xae-zero {
            add_header X-Accel-Expires 0;
            add_header Cache-Control "max-age=60";
            return 200 "xae-zero\n";
        }

        location /app/expires {
            add_header Expires "Fri, 01 Jan 2100 00:00:00 GMT";
            return 200 "expires\n";
        }

        location /app/expired {
            add_header Expires "Thu, 01 Jan 1970 00:00:01 GMT";
            return 200 "expired\n";
        }

        location /app/no-store {
            add_header Cache-Control "no-store, max-age=60";
            return 200 "no-store\n";
        }

        location /app/private {
            add_header Cache-Control "private, max-age=60";
            return 200 "private\n";
        }

        location /app/no-cache {
            add_header Cache-Control "no-cache, max-age=60";
            return 200 "no-cache\n";
        }

        location /app/max-age-zero {
            add_header Cache-Control "max-age=0";
            return 200 "max-age-zero\n";
        }

        location /app/cookie {
            add_header Cache-Control "max-age=60";
            add_header Set-Cookie "session=s3cr3t";
            return 200 "cookie\n";
        }

        location /app/public {
            add_header Cache-Control "public, max-age=60";
            return 200 "public $http_authorization\n";
        }

        location /app/revalidate {
            add_header Cache-Control "max-age=60, must-revalidate";
            return 200 "revalidate\n";
        }

        location /app/vary {
            add_header Cache-Control "max-age=60";
            add_header Vary "Accept-Language";
            return 200 "lang=$http_accept_language\n";
        }

        location /app/vary2 {
            add_header Cache-Control "max-age=60";
            add_header Vary "accept-language, X-Tenant";
            add_header Vary "Accept-Language";
            return 200 "lang=$http_accept_language tenant=$http_x_tenant\n";
        }

        location /app/vary-star {
            add_header Cache-Control "max-age=60";
            add_header Vary "*";
            return 200 "vary-star\n";
        }

        location /app/status/ {
            add_header Cache-Control "max-age=60" always;
            return 404 "not here\n";
        }

        location /app/error {
            add_header Cache-Control "max-age=60" always;
            return 500 "error\n";
        }

        location /app/cond {
            add_header Cache-Control "max-age=60";
            add_header ETag '"v1"';
            add_header X-Had-INM "[$http_if_none_match]";
            return 200 "conditional\n";
        }

        location /files/ {
            alias $TEST_NGINX_DATA_DIR/;
            add_header Cache-Control "max-age=60";
            default_type application/octet-stream;
        }

        location /chunked/ {
            alias $TEST_NGINX_DATA_DIR/;
            add_header Cache-Control "max-age=60";
            default_type application/octet-stream;
            ssi on;
            ssi_types *;
        }
    }
_EOC_

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: a miss goes upstream and is stored; the hit is served from Redis
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/one", "GET /c/one", "GET /c/one?x"]
--- response_body eval
["app /app/one\n", "app /app/one\n", "app /app/one\n"]
--- response_headers eval
["X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "X-Status: HIT\nCache-Control: max-age=60\nContent-Type: text/plain",
 "X-Status: MISS"]
--- response_headers_like eval
["", "Cache-Status: aai; hit; ttl=(59|60)\nAge: [01]", ""]
--- aai_after
is(app_count(qr{GET /app/one(\?x)? HTTP}), 2, 'the upstream saw the miss, not the hit');
my $keys = redis_cmd('KEYS', 'aai:c:*');
is(scalar @$keys, 2, 'two entries in redis');
like($keys->[0], qr/^aai:c:[0-9a-f]{64}$/, 'key is prefix + hex SHA-256');
my $pttl = redis_cmd('PTTL', $keys->[0]);
ok($pttl > 55000 && $pttl <= 60000, "PX is the freshness ($pttl)");
--- no_error_log
[error]
[warn]



=== TEST 2: the hit carries the stored headers (same X-App-Id) and status
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid 200 404 1m;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/id", "GET /c/id", "GET /c/status/x", "GET /c/status/x"]
--- error_code eval
[200, 200, 404, 404]
--- response_body eval
["app /app/id\n", "app /app/id\n", "not here\n", "not here\n"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; stored", "Cache-Status: aai; hit; ttl=\\d+", "Cache-Status: aai; fwd=miss; fwd-status=404; stored", "Cache-Status: aai; hit; ttl=\\d+"]
--- aai_after
is(app_count(qr{/app/id }), 1, 'the upstream saw the id request once');
is(app_count(qr{/app/status/x }), 1, 'the upstream saw the 404 once');
--- no_error_log
[error]



=== TEST 3: each freshness source, in order of priority
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid 200 7s;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/s-maxage", "GET /c/s-maxage",
 "GET /c/xae", "GET /c/xae",
 "GET /c/xae-at", "GET /c/xae-at",
 "GET /c/expires", "GET /c/expires",
 "GET /c/plain/v", "GET /c/plain/v"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=(29|30)\$",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=(19|20)\$",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d{9,}\$",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d{9,}\$",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=[67]\$"]
--- aai_after
for my $p (qw( s-maxage xae xae-at expires plain/v )) {
    is(app_count(qr{/app/$p }), 1, "$p: stored after one upstream request");
}
--- no_error_log
[error]



=== TEST 4: no freshness at all: not stored (no aai_cache_valid)
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/plain/n", "GET /c/plain/n"]
--- response_headers eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-ttl",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-ttl"]
--- aai_after
is(app_count(qr{/app/plain/n }), 2, 'both went upstream');
is(scalar @{ redis_cmd('KEYS', '*') }, 0, 'nothing in redis');



=== TEST 5: RFC 9111 refusals: never stored
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid any 1m;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/no-store", "GET /c/no-store",
 "GET /c/private", "GET /c/private",
 "GET /c/no-cache", "GET /c/no-cache",
 "GET /c/max-age-zero", "GET /c/max-age-zero",
 "GET /c/cookie", "GET /c/cookie",
 "GET /c/vary-star", "GET /c/vary-star",
 "GET /c/xae-zero", "GET /c/xae-zero",
 "GET /c/expired", "GET /c/expired"]
--- response_headers eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-store",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-store",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=private",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=private",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-cache",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=no-cache",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=zero-ttl",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=zero-ttl",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=set-cookie\nSet-Cookie: session=s3cr3t",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=set-cookie\nSet-Cookie: session=s3cr3t",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=vary",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=vary",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=zero-ttl",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=zero-ttl",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=expired",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=expired"]
--- aai_after
is(scalar @{ redis_cmd('KEYS', '*') }, 0, 'nothing in redis');
for my $p (qw( no-store private no-cache max-age-zero cookie vary-star
               xae-zero expired ))
{
    is(app_count(qr{/app/$p }), 2, "$p: both requests went upstream");
}



=== TEST 6: Authorization: stored only if public, s-maxage or must-revalidate
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://app/app/;
    }
--- more_headers
Authorization: Bearer abc
--- request eval
["GET /c/auth", "GET /c/auth",
 "GET /c/public", "GET /c/public",
 "GET /c/s-maxage", "GET /c/s-maxage",
 "GET /c/revalidate", "GET /c/revalidate"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+"]
--- response_body eval
["app /app/auth\n", "app /app/auth\n", "public Bearer abc\n",
 "public Bearer abc\n", "s-maxage\n", "s-maxage\n", "revalidate\n",
 "revalidate\n"]



=== TEST 7: only configured statuses; aai_cache_valid with codes
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid 200 1m;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/status/a", "GET /c/status/a", "GET /c/error", "GET /c/error"]
--- error_code eval
[404, 404, 500, 500]
--- response_headers eval
["Cache-Status: aai; fwd=miss; fwd-status=404; detail=status",
 "Cache-Status: aai; fwd=miss; fwd-status=404; detail=status",
 "Cache-Status: aai; fwd=miss; fwd-status=500; detail=status",
 "Cache-Status: aai; fwd=miss; fwd-status=500; detail=status"]



=== TEST 8: nginx's own error pages are never stored, even with "any"
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid any 1m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_DEAD_PORT;
    }
--- request eval
["GET /c/dead", "GET /c/dead"]
--- error_code eval
[502, 502]
--- response_headers eval
["Cache-Status: aai; fwd=miss; fwd-status=502; detail=error",
 "Cache-Status: aai; fwd=miss; fwd-status=502; detail=error"]
--- aai_after
is(scalar @{ redis_cmd('KEYS', '*') }, 0, 'nothing in redis');



=== TEST 8b: Vary: each variant is its own entry
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/vary", "GET /c/vary", "GET /c/vary", "GET /c/vary", "GET /c/vary",
 "GET /c/vary"]
--- more_headers eval
["Accept-Language: en", "Accept-Language: fr", "Accept-Language: en",
 "Accept-Language: fr", "", ""]
--- response_body eval
["lang=en\n", "lang=fr\n", "lang=en\n", "lang=fr\n", "lang=\n", "lang=\n"]
--- response_headers eval
["X-Status: MISS\nVary: Accept-Language\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "X-Status: MISS\nCache-Status: aai; fwd=vary-miss; fwd-status=200; stored",
 "X-Status: HIT",
 "X-Status: HIT",
 "X-Status: MISS\nCache-Status: aai; fwd=vary-miss; fwd-status=200; stored",
 "X-Status: HIT"]
--- aai_after
is(app_count(qr{/app/vary }), 3, 'three variants fetched, once each');
my @keys = sort @{ redis_cmd('KEYS', 'aai:c:*') };
is(scalar @keys, 5, 'vary record, variants set and three variants');
like(join(' ', @keys), qr/^aai:c:([0-9a-f]{64}) (aai:c:\1:[0-9a-f]{32} ){3}aai:c:\1:v$/,
     'variant keys derive from the base key');



=== TEST 9: Vary on two headers, names merged from several Vary lines
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/vary2", "GET /c/vary2", "GET /c/vary2", "GET /c/vary2"]
--- more_headers eval
["Accept-Language: en\nX-Tenant: a", "Accept-Language: en\nX-Tenant: b",
 "X-Tenant: a\nAccept-Language: en", "Accept-Language: en\nX-Tenant: b"]
--- response_body eval
["lang=en tenant=a\n", "lang=en tenant=b\n", "lang=en tenant=a\n",
 "lang=en tenant=b\n"]
--- response_headers eval
["X-Status: MISS", "X-Status: MISS", "X-Status: HIT", "X-Status: HIT"]



=== TEST 10: HEAD: its own entry (the key has the method), no body
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["HEAD /c/head", "HEAD /c/head", "GET /c/head", "GET /c/head"]
--- response_body eval
["", "", "app /app/head\n", "app /app/head\n"]
--- response_headers eval
["X-Status: MISS\nContent-Length: 14", "X-Status: HIT\nContent-Length: 14",
 "X-Status: MISS\nContent-Length: 14", "X-Status: HIT\nContent-Length: 14"]
--- aai_after
is(app_count(qr{"HEAD /app/head }), 1, 'HEAD went upstream once');
is(app_count(qr{"GET /app/head }), 1, 'GET went upstream once');



=== TEST 11: HEAD served from a GET entry when the key has no method
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_key $uri;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/nm", "HEAD /c/nm", "GET /c/nm"]
--- response_body eval
["app /app/nm\n", "", "app /app/nm\n"]
--- response_headers eval
["X-Status: MISS", "X-Status: HIT\nContent-Length: 12",
 "X-Status: HIT\nContent-Length: 12"]



=== TEST 12: a 5 MB binary body round-trips byte-exact (memory buffers)
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_max_size 8m;
        proxy_pass http://app/files/;
    }
--- request eval
["GET /c/big.bin", "GET /c/big.bin"]
--- response_body eval
[$::Files{'big.bin'}, $::Files{'big.bin'}]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; stored", "Cache-Status: aai; hit; ttl=\\d+"]
--- timeout: 10
--- no_error_log
[error]



=== TEST 13: a 5 MB body through temporary files and sendfile
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_max_size 8m;
        sendfile on;
        proxy_buffers 4 4k;
        proxy_pass http://app/files/;
    }
--- request eval
["GET /c/big.bin", "GET /c/big.bin"]
--- response_body eval
[$::Files{'big.bin'}, $::Files{'big.bin'}]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; stored", "Cache-Status: aai; hit; ttl=\\d+"]
--- timeout: 10
--- aai_after
my ($key) = @{ redis_cmd('KEYS', 'aai:c:*') };
my $len = redis_cmd('STRLEN', $key);
ok($len > 5 * 1024 * 1024 && $len < 5 * 1024 * 1024 + 1024,
   "the entry holds the whole body ($len bytes)");
--- no_error_log
[error]



=== TEST 14: a chunked upstream body round-trips byte-exact
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_pass http://app/chunked/;
    }
--- request eval
["GET /c/mid.bin", "GET /c/mid.bin"]
--- response_body eval
[$::Files{'mid.bin'}, $::Files{'mid.bin'}]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; stored", "Cache-Status: aai; hit; ttl=\\d+"]
--- response_headers eval
["", "Content-Length: 307200"]
--- no_error_log
[error]



=== TEST 15: over-size bodies pass through whole and are not stored
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_max_size 1k;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://app/files/;
    }
    location /k/ {
        aai_cache on;
        aai_cache_max_size 1k;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://app/chunked/;
    }
--- request eval
["GET /c/small.bin", "GET /c/small.bin", "GET /k/small.bin", "GET /k/small.bin"]
--- response_body eval
[$::Files{'small.bin'}, $::Files{'small.bin'}, $::Files{'small.bin'},
 $::Files{'small.bin'}]
--- response_headers eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=too-large",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=too-large",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored"]
--- aai_after
is(scalar @{ redis_cmd('KEYS', '*') }, 0, 'nothing in redis');
is(app_count(qr{/small.bin }), 4, 'all four went upstream');



=== TEST 16: aai_cache_bypass skips the lookup and stores; aai_cache_no_store
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_bypass $http_x_bypass;
        aai_cache_no_store $arg_nostore;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/b", "GET /c/b", "GET /c/b", "GET /c/n?nostore=1",
 "GET /c/n?nostore=1", "GET /c/n?nostore=0", "GET /c/n?nostore=0"]
--- more_headers eval
["", "X-Bypass: 1", "X-Bypass: 0", "", "", "", ""]
--- response_headers eval
["X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "X-Status: BYPASS\nCache-Status: aai; fwd=bypass; fwd-status=200; stored",
 "X-Status: HIT",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; detail=no-store-rule",
 "X-Status: MISS",
 "X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "X-Status: HIT"]
--- aai_after
is(app_count(qr{/app/b }), 2, 'the miss and the bypass went upstream');
is(app_count(qr{/app/n\?nostore=1 }), 2, 'no_store: both went upstream');



=== TEST 17: bypass with a header
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_bypass $http_x_bypass;
        add_header X-Status $aai_cache_status;
        proxy_pass http://app/app/;
    }
--- more_headers
X-Bypass: yes
--- request eval
["GET /c/h", "GET /c/h"]
--- response_headers eval
["X-Status: BYPASS", "X-Status: BYPASS"]
--- aai_after
is(app_count(qr{/app/h }), 2, 'both went upstream');
is(scalar @{ redis_cmd('KEYS', '*') }, 1, 'stored anyway');



=== TEST 18: a conditional miss is stored whole; a conditional hit is a 304
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://app/app/;
    }
--- more_headers
If-None-Match: "v1"
--- request eval
["GET /c/cond", "GET /c/cond"]
--- error_code eval
[200, 304]
--- response_headers eval
["X-Had-INM: []\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "ETag: \"v1\""]
--- response_body eval
["conditional\n", ""]



=== TEST 19: a range request on a hit gets 206 from the stored body
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://app/app/;
    }
--- more_headers
Range: bytes=0-2
--- request eval
["GET /c/range", "GET /c/range"]
--- error_code eval
[200, 206]
--- response_body eval
["app /app/range\n", "app"]



=== TEST 20: aai_cache off, other methods and subrequest-free locations
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        add_header X-Status "[$aai_cache_status]";
        proxy_pass http://app/app/;
        location /c/off/ {
            aai_cache off;
            add_header X-Status "[$aai_cache_status]";
            proxy_pass http://app/app/;
        }
    }
--- request eval
["GET /c/off/x", "GET /c/off/x", "POST /c/p\nbody", "POST /c/p\nbody"]
--- response_headers eval
["X-Status: []\n!Cache-Status", "X-Status: []\n!Cache-Status",
 "X-Status: []\n!Cache-Status", "X-Status: []\n!Cache-Status"]
--- aai_after
is(scalar @{ redis_cmd('KEYS', '*') }, 0, 'nothing stored');



=== TEST 21: aai_cache_key_prefix and a custom key; $aai_cache_key
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_key_prefix "tenant1:cache:";
        aai_cache_key $uri;
        add_header X-Key $aai_cache_key;
        proxy_pass http://app/app/;
    }
--- request eval
["GET /c/k?a=1", "GET /c/k?a=2"]
--- response_headers_like eval
["X-Key: tenant1:cache:[0-9a-f]{64}\nCache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+"]
--- aai_after
my $want = 'tenant1:cache:' . Digest::SHA::sha256_hex('/c/k');
is_deeply(redis_cmd('KEYS', '*'), [$want], 'key = prefix + sha256(key)');



=== TEST 22: metrics count hits, misses, bypasses, stores and bytes
--- http_config eval: $::HttpConfig
--- config
    location /c/ {
        aai_cache on;
        aai_cache_bypass $arg_bypass;
        proxy_pass http://app/app/;
    }
    location = /metrics {
        aai_metrics;
    }
--- request eval
["GET /c/m", "GET /c/m", "GET /c/m", "GET /c/m?bypass=1", "GET /metrics"]
--- response_body_like eval
["", "", "", "",
 qr/aai_cache_requests_total\{status="miss"\} 1\n(?s:.*)aai_cache_requests_total\{status="bypass"\} 1\n(?s:.*)aai_cache_requests_total\{status="hit"\} 2\n(?s:.*)aai_cache_stored_total 2\n(?s:.*)aai_cache_store_failures_total 0\n(?s:.*)aai_cache_bytes_served_total 22\n(?s:.*)aai_cache_redis_latency_seconds_count [1-9]/]
