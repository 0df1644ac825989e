# What the README promises of the cache that no other file proves: how
# long an entry stays in Redis (aai_cache_stale_ttl, only with
# aai_cache_use_stale, lengthened by the response's stale-while-revalidate
# and stale-if-error), a 206 never stored while a 200 to a range request
# is, aai_cache_valid inherited and replaced per level, X-Accel-Expires
# never overriding no-store or private (but overriding no-cache), a lookup
# of a resource known to vary is one MGET, a HEAD's header-only entry
# never stored over a GET's (but a GET's over a HEAD's), and a store
# Redis refuses counted in aai_cache_store_failures_total and logged.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my ($app_port, $app_stop, $app_prefix) = start_nginx_instance('c058app',
                                                              <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /plain/ { return 200 "plain $uri\n"; }
        location /swr/ {
            add_header Cache-Control "max-age=10, stale-while-revalidate=1000";
            return 200 "swr $uri\n";
        }
        location /sie/ {
            add_header Cache-Control "max-age=10, stale-if-error=500";
            return 200 "sie $uri\n";
        }
        location /p206/ {
            add_header Cache-Control "public, max-age=60";
            return 206 "part $uri\n";
        }
        location /file/ {
            # the static module honours Range: 206
            add_header Cache-Control "public, max-age=60";
        }
        location /full/ {
            # return ignores Range: the whole representation, 200
            add_header Cache-Control "public, max-age=60";
            return 200 "whole representation $uri\n";
        }
        location /404/ { return 404 "missing $uri\n"; }
        location /xae-no-store/ {
            add_header X-Accel-Expires 60;
            add_header Cache-Control "no-store";
            return 200 "xae-no-store\n";
        }
        location /xae-private/ {
            add_header X-Accel-Expires 60;
            add_header Cache-Control "private";
            return 200 "xae-private\n";
        }
        location /xae-no-cache/ {
            add_header X-Accel-Expires 60;
            add_header Cache-Control "no-cache";
            return 200 "xae-no-cache\n";
        }
        location /vary/ {
            add_header Vary "Accept-Language";
            add_header Cache-Control "max-age=60";
            return 200 "vary $http_accept_language\n";
        }
    }
_EOC_

# a file of the app for the static module, ranges and all
{
    mkdir "$app_prefix/html/file";
    open my $f, '>', "$app_prefix/html/file/f.txt" or die "f.txt: $!";
    print $f "0123456789abcdefghij\n";
    close $f;
}

my $common = <<"_EOC_";
        add_header X-Status \$aai_cache_status always;
        add_header X-Key \$aai_cache_key always;
        proxy_pass http://127.0.0.1:$app_port;
_EOC_

my ($port, $stop, $prefix) = start_nginx_instance('c058', <<"_EOC_");
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT timeout=2s
                    connect_timeout=2s;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        aai_cache on;
        aai_cache_valid 200 10s;

        location /plain/stale/ {
            aai_cache_use_stale error;
            aai_cache_stale_ttl 100s;
$common
        }
        location /plain/nostale/ {
            aai_cache_stale_ttl 100s;
$common
        }
        location /plain/default/ {
            aai_cache_use_stale error;
$common
        }
        location /swr/ {
            aai_cache_use_stale error;
            aai_cache_stale_ttl 100s;
$common
        }
        location /sie/ {
$common
        }
        location /p206/ {
            aai_cache_valid any 5m;
$common
        }
        location /file/ {
            aai_cache_valid any 5m;
$common
        }
        location /full/ {
$common
        }
        location /full/head/ {
            # the GET's and the HEAD's entries share a key
            aai_cache_key \$uri;
            aai_cache_bypass \$http_x_bypass;
$common
        }
        location /plain/inherit/ {
$common
        }
        location /plain/replace/ {
            aai_cache_valid 404 1m;
$common
        }
        location /404/replace/ {
            aai_cache_valid 404 1m;
$common
        }
        location /xae-no-store/ {
$common
        }
        location /xae-private/ {
$common
        }
        location /xae-no-cache/ {
$common
        }
        location /vary/ {
$common
        }
        location /metrics { aai_cache off; aai_metrics; }
    }
_EOC_

sub get {
    my ($path, $h) = @_;
    my ($st, $hd, $body) = http_get($port, $path, $h || {});
    return ($st // 'none', $hd, $body // '');
}

# the entry's time to live in Redis (ms), once the store arrived
sub pttl_of {
    my $key = shift;
    return 0 unless $key;
    my $t;
    wait_until(5, sub { $t = redis_cmd('PTTL', $key); $t > 0 });
    return $t;
}

sub stored_ttl {
    my $path = shift;
    my ($st, $h) = get($path);
    my $cs = $h->{'cache-status'} // '';
    return (-1, $cs) unless $cs =~ /\bstored\b/;
    return (pttl_of($h->{'x-key'}) / 1000, $cs);
}

redis_flushdb();

# --- how long an entry stays in Redis ---------------------------------------

my ($ttl, $cs) = stored_ttl('/plain/stale/a');
ok($ttl > 105 && $ttl <= 110,
   "aai_cache_stale_ttl 100s with use_stale: kept 10 s + 100 s ($ttl) $cs");
($ttl, $cs) = stored_ttl('/plain/nostale/a');
ok($ttl > 5 && $ttl <= 10,
   "aai_cache_stale_ttl without aai_cache_use_stale: kept 10 s ($ttl) $cs");
($ttl, $cs) = stored_ttl('/plain/default/a');
ok($ttl > 605 && $ttl <= 610,
   "aai_cache_stale_ttl's default, 10m: kept 10 s + 600 s ($ttl) $cs");
($ttl, $cs) = stored_ttl('/swr/a');
ok($ttl > 1005 && $ttl <= 1010,
   "stale-while-revalidate=1000 lengthens stale_ttl 100s ($ttl) $cs");
($ttl, $cs) = stored_ttl('/sie/a');
ok($ttl > 505 && $ttl <= 510,
   "stale-if-error=500 keeps it without use_stale ($ttl) $cs");

# --- ranges: a 206 is never stored, a 200 to a range request is ---------------

{
    my ($st, $h, $b) = get('/p206/a');
    is($st, 206, 'a 206 from the upstream (public, max-age=60) passes');
    unlike($h->{'cache-status'} // '', qr/\bstored\b/, '206: not stored');
    is(redis_cmd('EXISTS', $h->{'x-key'}), 0, '206: nothing in Redis');
    ($st, $h) = get('/p206/a');
    is("$st $h->{'x-status'}", '206 MISS', '206: the next request misses');

    ($st, $h, $b) = get('/file/f.txt', { Range => 'bytes=0-3' });
    is("$st $b", '206 0123',
       'a range request passes upstream untouched: the upstream\'s 206');
    unlike($h->{'cache-status'} // '', qr/\bstored\b/,
           'the upstream\'s 206: not stored');
    ($st, $h, $b) = get('/file/f.txt');
    is("$st $h->{'x-status'}", '200 MISS',
       'the whole file next: a miss (the 206 was not stored)');

    ($st, $h, $b) = get('/full/r', { Range => 'bytes=0-3' });
    is("$st $b", "200 whole representation /full/r\n",
       'an upstream that ignores ranges answers 200');
    like($h->{'cache-status'} // '', qr/\bstored\b/, 'that 200 is stored');
    ok(wait_redis_key($h->{'x-key'}), 'in Redis');
    ($st, $h, $b) = get('/full/r', { Range => 'bytes=0-4' });
    is("$st $h->{'x-status'} $b", '206 HIT whole',
       'a range of the stored body from the cache');
}

# --- aai_cache_valid: inherited, or replaced by a level's own lines --------

{
    my ($st, $h) = get('/plain/inherit/a');
    like($h->{'cache-status'} // '', qr/\bstored\b/,
         'aai_cache_valid 200 10s inherited from the server');
    ok(pttl_of($h->{'x-key'}) > 5000, 'for 10 s');
    ($st, $h) = get('/plain/replace/a');
    like($h->{'cache-status'} // '', qr/detail=status/,
         'a level with its own aai_cache_valid replaces the inherited: '
         . '200 no longer stored');
    ($st, $h) = get('/404/replace/a');
    like("$st " . ($h->{'cache-status'} // ''), qr/^404 .*\bstored\b/,
         'its own line: 404 stored');
    my $t = pttl_of($h->{'x-key'});
    ok($t > 55000 && $t <= 60000, "for 1m ($t ms)");
}

# --- X-Accel-Expires never overrides no-store or private -------------------

for my $cc (qw( no-store private )) {
    my ($st, $h) = get("/xae-$cc/a");
    like($h->{'cache-status'} // '', qr/detail=\Q$cc\E/,
         "X-Accel-Expires: 60 with $cc: not stored");
    ($st, $h) = get("/xae-$cc/a");
    is($h->{'x-status'}, 'MISS', "$cc: the next request misses");
}
{
    my ($st, $h) = get('/xae-no-cache/a');
    like($h->{'cache-status'} // '', qr/\bstored\b/,
         'X-Accel-Expires: 60 overrides no-cache: stored');
    my $t = pttl_of($h->{'x-key'});
    ok($t > 55000 && $t <= 60000, "for X-Accel-Expires' 60 s ($t ms)");
}

# --- a resource known to vary: one MGET per lookup -------------------------

{
    my ($st, $h) = get('/vary/a', { 'Accept-Language' => 'en' });
    like($h->{'cache-status'} // '', qr/\bstored\b/, 'vary: en stored');
    ok(wait_until(5, sub { @{ redis_cmd('KEYS', 'aai:c:*') } >= 3 }),
       'vary: the entry and its variant in Redis');

    my @cmds;
    for my $lang (qw( en fr )) {
        my $r;
        my @c = grep { $_->{client} ne 'lua' } redis_monitor(sub {
            ($st, $h) = get('/vary/a', { 'Accept-Language' => $lang });
            $r = "$st $h->{'x-status'}";
        });
        # the lookup's commands (the miss's store may or may not be seen)
        push @cmds, "$lang $r: " . join ' ', grep { !/^(?:SET|EVAL)/i }
                                             map { $_->{args}[0] } @c;
    }
    is($cmds[0], 'en 200 HIT: MGET', 'vary: a hit is one MGET, nothing else');
    is($cmds[1], 'fr 200 MISS: MGET',
       'vary: another variant\'s lookup is one MGET too');
}

# --- a HEAD's header-only entry never replaces a whole response's -------

{
    # flags bit 0 of the entry (ngx_aai_cache_entry.h): 1 header-only
    my $header_only = sub {
        my $v = redis_cmd('GETRANGE', shift, 0, 7) // '';
        return length $v == 8 ? ord(substr($v, 7, 1)) & 1 : 'none';
    };
    # the calls of the commands that can store an entry, in Redis
    my $stores = sub {
        my $n = 0;
        for (split /\r?\n/, redis_cmd('INFO', 'commandstats')) {
            $n += $1 if /^cmdstat_(?:set|eval|evalsha):calls=(\d+)/;
        }
        return $n;
    };

    my ($st, $h, $body) = http_get($port, '/full/head/a');
    my $key = $h->{'x-key'} // '';
    ok(wait_redis_key($key), 'head: the GET\'s entry stored');

    # a HEAD that skips the lookup (as a HEAD whose lookup overtook the
    # GET's store), answered while the GET's entry is there
    my $before = $stores->();
    ($st, $h) = http_get($port, '/full/head/a', { 'X-Bypass' => 1 }, 'HEAD');
    like("$st $h->{'x-status'} " . ($h->{'cache-status'} // ''),
         qr/^200 BYPASS .*\bstored\b/, 'head: the HEAD forwarded, to store');
    ok(wait_until(5, sub { $stores->() > $before }),
       'head: its store arrived in Redis');
    is($header_only->($key), 0, 'head: the entry is still the GET\'s');
    ($st, $h, $body) = http_get($port, '/full/head/a');
    is("$st $h->{'x-status'} $body",
       "200 HIT whole representation /full/head/a\n",
       'head: the next GET hits, with the body');

    # a HEAD's entry first: a GET does not hit it, and replaces it
    ($st, $h) = http_get($port, '/full/head/b', {}, 'HEAD');
    $key = $h->{'x-key'} // '';
    ok(wait_until(5, sub { $header_only->($key) eq '1' }),
       'head: a HEAD\'s entry stored, header-only');
    ($st, $h, $body) = http_get($port, '/full/head/b');
    is("$st $h->{'x-status'} $body",
       "200 MISS whole representation /full/head/b\n",
       'head: a GET misses a header-only entry');
    ok(wait_until(5, sub { $header_only->($key) eq '0' }),
       'head: and replaces it with its own');
    ($st, $h) = http_get($port, '/full/head/b', {}, 'HEAD');
    is("$st $h->{'x-status'}", '200 HIT', 'head: a HEAD hits the GET\'s');
}

my $m = metrics_get($port);
is($m->{aai_cache_store_failures_total}, 0, 'no store failed so far');

$stop->();
no_log_problems("$prefix/logs/error.log", 'no alert, no crash');

# --- a store Redis refuses: counted and logged -----------------------------

{
    my $rport = start_redis();
    redis_cmd_port($rport, 'CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    my ($p, $s, $pre) = start_nginx_instance('c058fail', <<"_EOC_");
    aai_cache_redis 127.0.0.1:$rport timeout=2s connect_timeout=2s;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        aai_cache on;
        aai_cache_valid 200 1m;
        location /metrics { aai_cache off; aai_metrics; }
        location / {
$common
        }
    }
_EOC_
    # Redis refuses writes: over its maxmemory, with no eviction
    redis_cmd_port($rport, 'CONFIG', 'SET', 'maxmemory', 1);
    my @cs;
    for my $i (1 .. 3) {
        my ($st, $h) = http_get($p, "/plain/f$i");
        push @cs, "$st " . ($h->{'x-status'} // '') . ' '
                  . (($h->{'cache-status'} // '') =~ /\bstored\b/ ? 'stored'
                                                                  : '-');
    }
    is("@cs", '200 MISS stored 200 MISS stored 200 MISS stored',
       'three misses pass every rule');
    my $mm = metrics_wait($p, '/metrics', sub {
        ($_[0]{aai_cache_store_failures_total} // 0) >= 3 });
    is($mm->{aai_cache_store_failures_total}, 3,
       'aai_cache_store_failures_total counts the three refused stores');
    is($mm->{aai_cache_stored_total}, 0, 'and aai_cache_stored_total none');
    redis_cmd_port($rport, 'CONFIG', 'SET', 'maxmemory', 0);
    is(scalar @{ redis_cmd_port($rport, 'KEYS', '*') }, 0, 'nothing stored');
    $s->();
    my @l = grep { /\[warn\].*aai_cache: storing in redis failed: OOM/ }
            file_lines("$pre/logs/error.log");
    ok(@l >= 1 && @l <= 3, 'logged at warn with Redis\'s error, at most once '
                           . 'a second: ' . scalar @l);
    no_log_problems("$pre/logs/error.log", 'store failures: no alert, no crash');
    stop_redis($rport);
}

$app_stop->();

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: X-Accel-Expires with no-store in the runner's nginx: never stored
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        aai_cache on;
        add_header X-Status $aai_cache_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/app;
    }
    location /app {
        add_header X-Accel-Expires 60;
        add_header Cache-Control "max-age=60, no-store";
        return 200 "app\n";
    }
--- aai_before
redis_flushdb();
--- request eval
["GET /t", "GET /t"]
--- response_headers eval
["X-Status: MISS\nCache-Status: aai; fwd=miss; fwd-status=200; detail=no-store",
 "X-Status: MISS"]
