# ngx_http_aai_cache_module against a hostile client and a broken Redis
# (issue 9): credentialed requests (RFC 9111, 3.5) with the shipped
# nginx.conf.example policy, poisoning through the client's own headers,
# entries whose headers would split the response, large entries, orphaned
# stampede locks.  Real redis of t/run-tests.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use AaiJwt;
use Compress::Zlib ();
use Digest::SHA qw( sha256 sha256_hex );
use Time::HiRes qw( sleep time );
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use File::Path qw( make_path );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_APP_PORT} = free_port();
$ENV{AAI_JWT_TEST_SECRET} = $AaiJwt::Secret;

sub key_of {
    return 'aai:c:' . sha256_hex(shift);
}

sub session {
    my $sub = shift;
    return 'Cookie: session=' . jwt(alg => 'HS256', claims => { sub => $sub });
}

# an entry as the module writes it (format: ngx_aai_cache_entry.h)
sub entry {
    my (%o) = @_;
    my $now = int(time * 1000);
    my $headers = '';
    my @h = @{ $o{headers} || [] };
    while (my ($n, $v) = splice(@h, 0, 2)) {
        $headers .= pack('n', length $n) . "$n\0" . pack('N', length $v)
                    . "$v\0";
    }
    my $body = $o{body} // '';
    my $e = 'AAIC' . pack('C', 1) . 'E' . pack('n', 0)
            . pack('Q>', $now) . pack('Q>', $now + 60 * 1000)
            . pack('N', 0) . pack('N', 0)
            . pack('n', $o{status} // 200)
            . pack('n', scalar(@{ $o{headers} || [] }) / 2)
            . pack('N', length $headers)
            . pack('Q>', length $body)
            . pack('q>', -1)
            . substr(sha256($o{key}), 0, 8)
            . $headers . $body;
    return $e . pack('N', Compress::Zlib::crc32($e));
}

# A TCP proxy to the harness redis that holds the first command with an NX
# argument for $delay s (then sends it, whether its client is still there or
# not).  Returns (port, pid).
sub slow_lock_proxy {
    my $delay = shift;
    my $l = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "listen: $!";
    my $port = $l->sockport;
    my $pid = fork // die "fork: $!";
    return ($port, $pid) if $pid;

    # not the test's handlers (they stop the test's nginx)
    $SIG{$_} = 'DEFAULT' for qw( TERM INT HUP );

    my (%peer, @held, $done);
    my $sel = IO::Select->new($l);
    my $end = time + 60;
    while (time < $end) {
        for my $h (@held) {
            next if !$h->[0] || time < $h->[2];
            syswrite($h->[0], $h->[1]);
            $h->[0] = undef;
        }
        for my $s ($sel->can_read(0.01)) {
            if ($s == $l) {
                my $c = $l->accept or next;
                my $r = IO::Socket::INET->new(
                    PeerAddr => '127.0.0.1',
                    PeerPort => $ENV{TEST_NGINX_REDIS_PORT}) or next;
                @peer{$c, $r} = ($r, $c);
                $sel->add($c, $r);
                next;
            }
            my $n = sysread($s, my $buf, 65536);
            my $to = $peer{$s};
            if (!$n) {
                $sel->remove($s);
                delete $peer{$s};
                # a client gone: its redis side stays for what is held
                next if grep { $_->[0] && $_->[0] == $to } @held;
                if ($to) { $sel->remove($to); delete $peer{$to}; close $to }
                close $s;
                next;
            }
            if (!$done && $buf =~ /\r\nNX\r\n/) {
                $done = 1;
                push @held, [$to, $buf, time + $delay];
                next;
            }
            syswrite($to, $buf) if $to;
        }
    }
    POSIX::_exit(0);
}

# Waits (at most 10 s) until an instance's cache has its Redis connection:
# its location /w/ (WARM below) answers without detail=redis-unavailable.
our $Warm = <<'_EOC_';
        location /w/ {
            aai_cache on;
            proxy_pass http://127.0.0.1:$TEST_NGINX_INSTANCE_PORT/ok;
        }
        location = /ok {
            return 200 "ok\n";
        }
_EOC_

sub warm {
    my $port = shift;
    my $deadline = time + 10;
    while (time < $deadline) {
        my ($st, $h) = http_get($port, '/w/', {});
        return 1 if $st && ($h->{'cache-status'} // '') !~ /unavailable/;
        sleep 0.05;
    }
    return 0;
}

# The cache policy of nginx.conf.example as written: its
# aai_cache_credentials lines, and the aai_cache_* lines of location /api/.
sub example_policy {
    open(my $fh, '<', 'nginx.conf.example') or die "nginx.conf.example: $!";
    my $text = do { local $/; <$fh> };
    close $fh;
    $text =~ s/#[^\n]*//g;

    my ($head) = ($text =~ /^(.*?)\n\s*server\s*\{/s);
    my @http = ($head =~ /^\s*(aai_cache_credentials\b[^;]*;)/mg);
    my ($api) = ($text =~ /location \/api\/ \{(.*?)\n\s*\}/s);
    die "no location /api/ in nginx.conf.example" unless $api;
    my @loc = ($api =~ /^\s*(aai_cache\w*\b[^;]*;)/mg);
    die "no aai_cache in location /api/" unless grep { /^aai_cache on/ } @loc;

    s/\s+/ /g for @http, @loc;
    return (join("\n    ", @http), join("\n        ", @loc));
}

our ($ExampleHttp, $ExampleApi) = example_policy();

# a large body the app serves from a file
my $data = server_root() . '-data054';
make_path($data);                 # the run's servroot may not exist yet
$ENV{TEST_NGINX_DATA_DIR} = $data;
our $BigLen = 40 * 1024 * 1024;
{
    open my $out, '>', "$data/big.bin" or die "$data/big.bin: $!";
    binmode $out;
    my $block = join '', map { sha256("big$_") } 0 .. 32767;   # 1 MB
    print $out $block for 1 .. $BigLen / length $block;
    close $out;
}

our $App = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s;
    aai_jwt_key hs256 env:AAI_JWT_TEST_SECRET;
    aai_jwt_token $http_authorization;
    aai_jwt_token $cookie_session;

    server {
        listen 127.0.0.1:$TEST_NGINX_APP_PORT;

        # answers per user and sends no cache headers, as most apps do
        location /api/ {
            return 200 "hello [$aai_user]\n";
        }

        location /public/ {
            add_header Cache-Control "public, max-age=60";
            return 200 "public for [$aai_user]\n";
        }

        location /files/ {
            alias html/;
        }

        location /bad {
            return 400 "bad\n";
        }
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    redis_flushdb();
    $block->set_value('main_config', "env AAI_JWT_TEST_SECRET;\n"
                      . ($block->main_config // ''));
});

no_shuffle();
run_tests();

# a worker is killed holding a lock
AaiTest::logs_once_more(allow => [qr/worker process \d+ exited on signal 9\b/]);

__DATA__

=== TEST 1: the example's policy: alice's answer is never served to bob
--- http_config eval
$::App . "    $::ExampleHttp\n"
--- config eval
"    location /api/ {
        $::ExampleApi
        proxy_pass http://127.0.0.1:\$TEST_NGINX_APP_PORT;
    }"
--- request eval
["GET /api/profile", "GET /api/profile", "GET /api/profile",
 "GET /api/profile", "GET /api/profile", "GET /api/profile"]
--- more_headers eval
[::session('alice'), ::session('bob'), ::session('alice'),
 "", "", ::session('bob')]
--- response_body eval
["hello [alice]\n", "hello [bob]\n", "hello [alice]\n",
 "hello []\n", "hello []\n", "hello [bob]\n"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+",
 "Cache-Status: aai; fwd=bypass; fwd-status=200; detail=credentials"]
--- no_error_log
[error]



=== TEST 2: aai_cache_valid never overrides it; public answers are shared
--- http_config eval: $::App
--- config
    location /t/ {
        aai_cache on;
        aai_cache_valid any 1m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/;
    }
--- request eval
["GET /t/api/x", "GET /t/api/x", "GET /t/public/x", "GET /t/public/x",
 "GET /t/public/x"]
--- more_headers eval
["Authorization: Bearer " . ::jwt(claims => { sub => 'alice' }),
 "Authorization: Bearer " . ::jwt(claims => { sub => 'bob' }),
 "Authorization: Bearer " . ::jwt(claims => { sub => 'alice' }),
 "Authorization: Bearer " . ::jwt(claims => { sub => 'bob' }),
 ""]
--- response_body eval
["hello [alice]\n", "hello [bob]\n", "public for [alice]\n",
 "public for [alice]\n", "public for [alice]\n"]
--- aai_after
is(redis_cmd('EXISTS', ::key_of('httpGETlocalhost/t/api/x')), 0,
   'the per-user answer is not in redis');



=== TEST 3: aai_cache_credentials names headers and variables; off
--- http_config eval: $::App
--- config
    location /k/ {
        aai_cache on;
        aai_cache_valid 200 1m;
        aai_cache_credentials X-Api-Key $cookie_sid;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/api/;
    }
    location /off/ {
        aai_cache on;
        aai_cache_valid 200 1m;
        aai_cache_credentials off;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/api/;
    }
--- request eval
["GET /k/a", "GET /k/b", "GET /k/c", "GET /k/c", "GET /off/a", "GET /off/a"]
--- more_headers eval
["X-Api-Key: k1", "Cookie: sid=s1", "Authorization: Basic eDp5", "",
 "Authorization: Basic eDp5", "Authorization: Basic eDp5"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; detail=credentials",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+"]



=== TEST 4: aai_cache_credentials: a bad name fails nginx -t
--- http_config eval: $::App
--- config
    location / {
        aai_cache_credentials "X Api";
    }
--- must_die
--- error_log
invalid credential "X Api" in "aai_cache_credentials"



=== TEST 5: 416 and 412 caused by the client's headers are not served to a plain GET
--- http_config eval: $::App
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid any 1m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/files/;
    }
--- user_files
>>> f.txt
0123456789
--- request eval
["GET /c/f.txt", "GET /c/f.txt", "GET /c/f.txt", "GET /c/f.txt",
 "GET /c/f.txt"]
--- more_headers eval
["Range: bytes=999999-", "If-Match: \"x\"",
 "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT", "", ""]
--- error_code eval
[416, 412, 412, 200, 200]
--- response_body_like eval
[".*", ".*", ".*", "^0123456789\n\$", "^0123456789\n\$"]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=416; detail=status",
 "Cache-Status: aai; fwd=miss; fwd-status=412; detail=precondition",
 "Cache-Status: aai; fwd=miss; fwd-status=412; detail=precondition",
 "Cache-Status: aai; fwd=miss; fwd-status=200; stored",
 "Cache-Status: aai; hit; ttl=\\d+"]



=== TEST 6: 400 and friends are never stored, even with aai_cache_valid any
--- http_config eval: $::App
--- config
    location /c/ {
        aai_cache on;
        aai_cache_valid any 1m;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/;
    }
--- request eval
["GET /c/bad", "GET /c/bad"]
--- error_code eval
[400, 400]
--- response_headers_like eval
["Cache-Status: aai; fwd=miss; fwd-status=400; detail=status",
 "Cache-Status: aai; fwd=miss; fwd-status=400; detail=status"]



=== TEST 7: a stored entry whose header value holds CR LF is a miss, logged
--- http_config eval: $::App
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/public/;
    }
--- aai_before
redis_cmd('SET', ::key_of('httpGETlocalhost/c/crlf'),
          ::entry(key => 'httpGETlocalhost/c/crlf',
                  headers => ['X-A' => "a\r\nSet-Cookie: evil=1"],
                  body => "evil\n"));
--- request
GET /c/crlf
--- response_body
public for []
--- raw_response_headers_unlike: evil
--- error_log
bad header entry



=== TEST 8: a stored entry with a header name that is not a token is a miss
--- http_config eval: $::App
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/public/;
    }
--- aai_before
redis_cmd('SET', ::key_of('httpGETlocalhost/c/name'),
          ::entry(key => 'httpGETlocalhost/c/name',
                  headers => ["X-B: c\r\nX-D" => "1"], body => "evil\n"));
--- request
GET /c/name
--- response_body
public for []
--- raw_response_headers_unlike: X-D
--- error_log
bad header entry



=== TEST 9: a stored header value with a tab is served
--- http_config eval: $::App
--- config
    location /c/ {
        aai_cache on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/public/;
    }
--- aai_before
redis_cmd('SET', ::key_of('httpGETlocalhost/c/ok'),
          ::entry(key => 'httpGETlocalhost/c/ok',
                  headers => ['X-Ok' => "a\tb"], body => "good\n"));
--- request
GET /c/ok
--- response_body
good
--- response_headers
X-Ok: a	b
--- no_error_log
[warn]



=== TEST 10: a lock SET that timed out and ran later stalls nobody for long
--- http_config eval: $::App
--- config
    location /t { return 200 "ok\n"; }
--- request
GET /t
--- aai_after
# a proxy before Redis holds the first SET ... NX for 400 ms: the module
# gives up on it after 100 ms, Redis runs it afterwards
my ($pport, $ppid) = ::slow_lock_proxy(0.4);
$ENV{TEST_NGINX_PROXY_PORT} = $pport;
my $conf = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_PROXY_PORT connect_timeout=2s
                    timeout=100ms;
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
WARM
        location /app/ {
            add_header Cache-Control "no-store";
            return 200 "app\n";
        }
        location /l/ {
            aai_cache on;
            aai_cache_lock on;
            aai_cache_lock_timeout 10s;
            proxy_pass http://127.0.0.1:$TEST_NGINX_INSTANCE_PORT/app/;
        }
    }
_EOC_
$conf =~ s/WARM\n/$::Warm/;
my ($port, $stop) = start_nginx_instance('c054lock', $conf);
ok(::warm($port), 'the instance is connected to redis');
local $AaiTest::HttpTimeout = 15;
my $lock = ::key_of('httpGETlocalhost/l/x') . ':l';

my ($st) = http_get($port, '/l/x', {});
is($st, 200, 'the request whose lock SET timed out is answered');
my $deadline = time + 3;
sleep 0.02 while !redis_cmd('EXISTS', $lock) && time < $deadline;
ok(redis_cmd('EXISTS', $lock), 'Redis ran the SET after the module gave up');
ok(::warm($port), 'connected again');

my $t0 = time;
my ($st2) = http_get($port, '/l/x', {});
my $took = time - $t0;
is($st2, 200, 'the next request is answered');
cmp_ok($took, '<', 3, "it did not wait for the orphaned lock ($took s)");
$stop->();
kill 'KILL', $ppid;
waitpid($ppid, 0);



=== TEST 11: a worker killed while holding a lock stalls nobody for long
--- http_config eval: $::App
--- config
    location /t { return 200 "ok\n"; }
--- request
GET /t
--- aai_after
$ENV{TEST_NGINX_HUNG_PORT} = hung_listener();
my $conf = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                    timeout=1s;
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
WARM
        location /app/ {
            add_header Cache-Control "max-age=60";
            return 200 "app\n";
        }
        location /hung/ {
            aai_cache on;
            aai_cache_key killed;
            aai_cache_lock on;
            aai_cache_lock_timeout 10s;
            proxy_read_timeout 30s;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
        }
        location /fine/ {
            aai_cache on;
            aai_cache_key killed;
            aai_cache_lock on;
            aai_cache_lock_timeout 10s;
            proxy_pass http://127.0.0.1:$TEST_NGINX_INSTANCE_PORT/app/;
        }
    }
_EOC_
$conf =~ s/WARM\n/$::Warm/;
my ($port, $stop, $prefix) = start_nginx_instance('c054kill', $conf);
ok(::warm($port), 'the instance is connected to redis');
local $AaiTest::HttpTimeout = 15;
my $lock = ::key_of('killed') . ':l';

my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                              Timeout => 3) or die "connect: $!";
syswrite($s, "GET /hung/x HTTP/1.1\r\nHost: localhost\r\n\r\n");
my $deadline = time + 3;
sleep 0.02 while !redis_cmd('EXISTS', $lock) && time < $deadline;
ok(redis_cmd('EXISTS', $lock), 'the hung request holds the lock');

my ($master) = file_lines("$prefix/logs/nginx.pid");
chomp $master;
my ($worker) = split ' ', `pgrep -P $master`;
ok($worker, "worker $worker of master $master");
kill 'KILL', $worker;
$deadline = time + 5;
while (time < $deadline) {
    my ($w) = split ' ', `pgrep -P $master`;
    last if $w && $w != $worker;
    sleep 0.02;
}
close $s;
ok(::warm($port), 'the new worker is connected to redis');

my $t0 = time;
my ($st) = http_get($port, '/fine/x', {});
my $took = time - $t0;
is($st, 200, 'the next request is answered');
cmp_ok($took, '<', 3, "it did not wait for the dead worker's lock ($took s)");
$stop->();



=== TEST 12: a 40 MB entry is stored without a command past the timeout
--- http_config eval: $::App
--- config
    location /t { return 200 "ok\n"; }
--- request
GET /t
--- aai_after
my $conf = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT connect_timeout=2s
                    timeout=100ms;
    # the requests' debug lines would take more time than the 40 MB
    error_log logs/error.log warn;
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
WARM
        location /files/ {
            alias $TEST_NGINX_DATA_DIR/;
        }
        location /c/ {
            aai_cache on;
            aai_cache_valid 200 1m;
            aai_cache_max_size 64m;
            proxy_pass http://127.0.0.1:$TEST_NGINX_INSTANCE_PORT/files/;
        }
    }
_EOC_
$conf =~ s/WARM\n/$::Warm/;
my ($port, $stop, $prefix) = start_nginx_instance('c054big', $conf);
ok(::warm($port), 'the instance is connected to redis');
local $AaiTest::HttpTimeout = 30;
my $key = ::key_of('httpGETlocalhost/c/big.bin');

my $t0 = time;
my ($st, $h, $body) = http_get($port, '/c/big.bin', {});
is($st, 200, 'the large response is served');
is(length($body // ''), $::BigLen, 'whole');
like($h->{'cache-status'} // '', qr/stored/, 'it is being stored');
my $deadline = time + 20;
sleep 0.05 while !redis_cmd('EXISTS', $key) && time < $deadline;
my $len = redis_cmd('STRLEN', $key);
ok($len > $::BigLen, "the entry is in redis ($len bytes, "
                     . sprintf('%.2f s', time - $t0) . ")");
is(scalar(grep { /timed out|storing in redis failed/ }
           file_lines("$prefix/logs/error.log")), 0,
   'no command timed out');
is(scalar(@{ redis_cmd('KEYS', 'aai:c:*:w*') }), 0,
   'no temporary key left');
$stop->();



=== TEST 13: aai_cache_max_size: 512m leaves no room for the headers in Redis
--- http_config eval: $::App
--- config
    location / {
        aai_cache_max_size 512m;
    }
--- must_die
--- error_log
size "512m" in "aai_cache_max_size" is over 512m less 1m
