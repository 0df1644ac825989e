# ngx_http_aai_cache_module when what is in Redis is not right (corrupted,
# truncated, another version, another program's value, another key's entry,
# a value of another type) and when Redis fails (refused, hung, restarted).
# A bad entry is a miss, logged, never served; Redis failing never fails a
# request.
#
# Entries are built here from the documented format (the comment at the top
# of ngx_http_aai_cache_module.c), which this file also checks.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT no_log_problems wait_redis_key restart_redis
    client_gone_get );
use Compress::Zlib ();
use Digest::SHA qw( sha256 sha256_hex );
use Time::HiRes qw( sleep time );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_APP_PORT} = free_port();

sub key_of {
    my $k = shift;
    return 'aai:c:' . sha256_hex($k);
}

# an entry as the module writes it
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
    my $e = 'AAIC' . pack('C', $o{version} // 1) . ($o{type} // 'E')
            . pack('n', $o{flags} // 0)
            . pack('Q>', $now) . pack('Q>', $now + ($o{ttl} // 60) * 1000)
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

our $Key = 'httpGETlocalhost/c/x';
our $Good = entry(key => $Key, status => 203,
                  headers => ['Content-Type' => 'text/x-made',
                              'X-Made' => 'by hand'],
                  body => "made by hand\n");

# body lengths crossing the 16- and 64-byte steps of the checksum
our @Lens = (0 .. 20, 56 .. 72, 120 .. 136, 1000, 4999);

add_block_preprocessor(sub {
    redis_flushdb();
});

our $HttpConfig = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;

    server {
        listen 127.0.0.1:$TEST_NGINX_APP_PORT;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "from upstream $uri\n";
        }
    }
_EOC_

our $Config = <<'_EOC_';
    location /c/ {
        aai_cache on;
        add_header X-Status $aai_cache_status always;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT;
    }
_EOC_


# --- Redis refused, hung, restarted ---------------------------------------

sub timed_get {
    my ($st, $h, $body, $dt) = AaiTest::timed_get(@_);
    return ($st // 0, $h->{'x-status'} // '', $h->{'cache-status'} // '',
            $body // '', $dt);
}

my ($app_port, $app_stop) = start_nginx_instance('c052app', <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "app $uri\n";
        }
    }
_EOC_

sub front {
    my ($name, $redis) = @_;
    return start_nginx_instance($name, <<_EOC_);
    aai_cache_redis $redis;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / {
            aai_cache on;
            aai_cache_lock on;
            add_header X-Status \$aai_cache_status;
            proxy_pass http://127.0.0.1:$app_port;
        }
        location ~ ^/purge(/.*)\$ {
            aai_cache_purge \$scheme\$request_method\$host\$1;
        }
    }
_EOC_
}


{
    my $dead = free_port();
    my ($port, $stop, $prefix) = front('c052r',
                                       "127.0.0.1:$dead timeout=200ms");
    my @r = map { [timed_get($port, "/r$_")] } 1 .. 10;
    is(join(',', map { "$_->[0] $_->[1] $_->[3]" } @r),
       join(',', map { "200 MISS app /r$_\n" } 1 .. 10),
       'refused: every request answered by the upstream');
    # none waits for Redis (a connect, a probe: backoff 1 s); the total is
    # not bounded, on a loaded machine 10 requests may take a while
    my ($slowest) = sort { $b <=> $a } map { $_->[4] } @r;
    cmp_ok($slowest, '<', 0.2, "refused: none waits ($slowest s)");
    like($r[-1][2], qr/detail=redis-unavailable/,
         'refused: Cache-Status says why');
    my ($pst) = timed_get($port, '/purge/r1');
    is($pst, 503, 'refused: purge answers 503');
    no_log_problems("$prefix/logs/error.log", 'refused: no alert, no crash');
    $stop->();
}

{
    my $hung = hung_listener();
    my ($port, $stop, $prefix) = front('c052h',
        "127.0.0.1:$hung connect_timeout=300ms timeout=300ms");
    my @first = timed_get($port, '/h0');
    is("$first[0] $first[1] $first[3]", "200 MISS app /h0\n",
       'hung: answered by the upstream');
    cmp_ok($first[4], '<', 1.2, "hung: within the timeout ($first[4] s)");
    my $t0 = time;
    my @r = map { [timed_get($port, "/h$_")] } 1 .. 10;
    my $all = time - $t0;
    is(scalar(grep { $_->[0] == 200 } @r), 10, 'hung: all answered');
    # none waits for the 300 ms timeout again (the total is not bounded)
    my ($slowest) = sort { $b <=> $a } map { $_->[4] } @r;
    cmp_ok($slowest, '<', 0.3, "hung: the circuit breaker answers fast "
           . "($all s, slowest $slowest s)");
    no_log_problems("$prefix/logs/error.log", 'hung: no alert, no crash');
    $stop->();
}

{
    # a client that goes away while its lookup is pending
    my $hung = hung_listener();
    my ($port, $stop, $prefix) = front('c052c', "127.0.0.1:$hung timeout=1s");
    ok(client_gone_get($port, '/gone', "$prefix/logs/error.log", 3),
       'client gone: request finalized while redis is waited for');
    sleep 1.1;    # the lookup times out: its handler must not run
    my @r = timed_get($port, '/after');
    is("$r[0] $r[3]", "200 app /after\n", 'client gone: nginx still serves');
    no_log_problems("$prefix/logs/error.log", 'client gone: no alert, no crash');
    $stop->();
}

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = front('c052s',
        "127.0.0.1:$rport timeout=3s backoff=200ms");
    my $skey = key_of('httpGETlocalhost/s');
    my @s;
    push @s, (timed_get($port, '/s'))[1];
    wait_redis_key($skey, 5, $rport);
    push @s, (timed_get($port, '/s'))[1];
    is("@s", 'MISS HIT', 'restart: stored while redis is up');

    restart_redis($rport, sub {
        my @down = map { [timed_get($port, '/s')] } 1 .. 3;
        is(join(' ', map { "$_->[0] $_->[1]" } @down),
           '200 MISS 200 MISS 200 MISS',
           'restart: redis down, answered by the upstream');
    });
    my $deadline = time + 5;
    my @up;
    my $n = 0;
    while (time < $deadline) {
        # a key per try: one looked up while Redis was still down can be
        # stored all the same when Redis is back by its response ("stored;
        # detail=redis-unavailable"), and the next try of its key would hit
        $n++;
        @up = timed_get($port, "/s?up=$n");
        last if $up[2] =~ /; stored$/;    # not one looked up while down
        sleep 0.1;
    }
    like($up[2], qr/^aai; fwd=miss; fwd-status=200; stored$/,
         'restart: stores again once redis is back');
    wait_redis_key(key_of("httpGETlocalhost/s?up=$n"), 5, $rport);
    is((timed_get($port, "/s?up=$n"))[1], 'HIT', 'restart: and hits');
    no_log_problems("$prefix/logs/error.log", 'restart: no alert, no crash');
    $stop->();
}


# --- lock waiters: woken by a message from anyone, or by polling ----------

{
    use IO::Socket::INET ();
    use IO::Select ();

    my ($port, $stop, $prefix) = front('c052w',
        "127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT} timeout=3s");
    # the request waits for the lock (its debug line), not a sleep that
    # assumes it got there
    my $waiting = sub {
        my $lock = shift;
        return AaiTest::wait_until(5, sub {
            scalar grep { /aai cache wait for lock "\Q$lock\E"/ }
                   file_lines("$prefix/logs/error.log") });
    };
    my $woken = sub {
        my ($how, $lock) = @_;
        return scalar grep { /aai cache woken: \Q$how\E, lock "\Q$lock\E"/ }
                      file_lines("$prefix/logs/error.log");
    };
    my $send = sub {
        my $path = shift;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Timeout => 3)
            or die "connect: $!";
        syswrite($s, "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n");
        return $s;
    };
    my $recv = sub {
        my $s = shift;
        my $raw = '';
        my $sel = IO::Select->new($s);
        while ($sel->can_read(5)) {
            last unless sysread($s, my $buf, 4096);
            $raw .= $buf;
        }
        my ($x) = $raw =~ /\r\nX-Status: (\w+)/;
        my ($cs) = $raw =~ /\r\nCache-Status: ([^\r]+)/;
        my ($body) = $raw =~ /\r\n\r\n(.*)\z/s;
        return ($x // '', $cs // '', $body // '');
    };

    for my $how (qw( message poll )) {
        redis_flushdb();
        my $key = key_of("httpGETlocalhost/w/$how");
        redis_cmd('SET', "$key:l", 'someone-else', 'PX', 5000);

        my $t0 = time;
        my $s = $send->("/w/$how");
        ok($waiting->("$key:l"), "lock waiter ($how): waits for the lock");
        redis_cmd('SET', $key, entry(key => "httpGETlocalhost/w/$how",
                                     body => "stored by the holder\n"),
                  'PX', 60000);
        if ($how eq 'message') {
            redis_cmd('PUBLISH', 'aai:cache:unlock', "1 $key:l");
        } else {
            redis_cmd('DEL', "$key:l");
        }
        my ($x, $cs, $body) = $recv->($s);
        my $took = time - $t0;

        is("$x $body", "HIT stored by the holder\n",
           "lock waiter ($how): served what the holder stored");
        if ($how eq 'message') {
            like($cs, qr/^aai; hit; ttl=\d+; collapsed$/,
                 'lock waiter (message): collapsed');
            cmp_ok($took, '<', 0.45, "lock waiter (message): woken at once "
                   . "($took s)");
            ok($woken->('stored', "$key:l"),
               'lock waiter (message): woken by the message, not a poll');
        } else {
            cmp_ok($took, '<', 1.2, "lock waiter (poll): within a poll "
                   . "($took s)");
        }
    }

    redis_flushdb();
    my $key = key_of('httpGETlocalhost/w/notstored');
    redis_cmd('SET', "$key:l", 'someone-else', 'PX', 5000);
    my $t0 = time;
    my $s = $send->('/w/notstored');
    ok($waiting->("$key:l"), 'lock waiter (not stored): waits for the lock');
    redis_cmd('PUBLISH', 'aai:cache:unlock', "0 $key:l");
    my ($x, $cs, $body) = $recv->($s);
    my $took = time - $t0;
    is("$x $body", "MISS app /w/notstored\n",
       'lock waiter (not stored): goes upstream');
    cmp_ok($took, '<', 0.45, "lock waiter (not stored): at once ($took s)");
    ok($woken->('not stored', "$key:l"),
       'lock waiter (not stored): woken by the message');

    no_log_problems("$prefix/logs/error.log", 'lock waiters: no alert, no crash');
    $stop->();
}

$app_stop->();

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: an entry written by hand from the documented format is served
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), $::Good, 'PX', 60000);
--- request
GET /c/x
--- error_code: 203
--- response_body
made by hand
--- response_headers
X-Status: HIT
X-Made: by hand
Content-Type: text/x-made
Content-Length: 13
--- no_error_log
[warn]



=== TEST 2: corrupted: a miss, logged, then replaced
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
my $bad = $::Good;
substr($bad, 80, 1) = 'Z';
redis_cmd('SET', key_of($::Key), $bad, 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- response_headers
X-Status: MISS
Cache-Status: aai; fwd=miss; fwd-status=200; stored
--- error_log eval
qr/\[warn\] .*aai_cache: corrupted entry "aai:c:[0-9a-f]{64}" in redis, not served/
--- aai_after
like(redis_cmd('GET', key_of($::Key)), qr/^AAIC\x01E.*from upstream \/c\/x\n.{4}\z/s,
     'the bad entry was replaced');



=== TEST 3: another version of the format
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), entry(key => $::Key, version => 2,
          body => "v2\n"), 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- response_headers
X-Status: MISS
--- error_log
aai_cache: other version entry



=== TEST 4: truncated
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), substr($::Good, 0, length($::Good) - 6),
          'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- error_log
aai_cache: truncated entry



=== TEST 5: another program's value under the key
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), 'x' x 100, 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- error_log
aai_cache: foreign entry



=== TEST 6: the entry of another key (copied, or a collision): not served
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), entry(key => 'httpGETlocalhost/c/other',
          body => "other\n"), 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- error_log
aai_cache: foreign entry



=== TEST 7: a valid checksum over malformed headers
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
my $e = entry(key => $::Key, headers => ['A' => 'b'], body => "x\n");
substr($e, 65, 1) = "\xff";
substr($e, -4) = pack('N', Compress::Zlib::crc32(substr($e, 0, -4)));
redis_cmd('SET', key_of($::Key), $e, 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- error_log
aai_cache: malformed entry



=== TEST 8: a value of another type: Redis answers an error, a miss
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('RPUSH', key_of($::Key), 'a');
--- request
GET /c/x
--- response_body
from upstream /c/x
--- response_headers
X-Status: MISS
Cache-Status: aai; fwd=miss; fwd-status=200; stored; detail=redis-error
--- no_error_log
[alert]



=== TEST 9: a header-only entry (the response to a HEAD) is not a GET hit
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), entry(key => $::Key, flags => 1,
          headers => ['X-Head' => '1']), 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- response_headers
X-Status: MISS
!X-Head



=== TEST 10: an expired entry left in Redis (clock skew) is not a hit
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
redis_cmd('SET', key_of($::Key), entry(key => $::Key, ttl => -5,
          body => "old\n"), 'PX', 60000);
--- request
GET /c/x
--- response_body
from upstream /c/x
--- response_headers
X-Status: EXPIRED



=== TEST 11: checksums of entries of many lengths, both ways
Hand-made entries (zlib's crc32) are served; what the module stores checks
out with zlib's crc32.
--- http_config eval: $::HttpConfig
--- config eval: $::Config
--- aai_before
for my $n (@::Lens) {
    redis_cmd('SET', key_of("httpGETlocalhost/c/h$n"),
              entry(key => "httpGETlocalhost/c/h$n", body => 'b' x $n),
              'PX', 60000);
}
--- init
# runs in the runner's package: qualify names.  One check for all the
# lengths (each is a case of one behaviour, not a behaviour of its own)
my $port = $ENV{TEST_NGINX_SERVER_PORT};
my @wrong;
for my $n (@::Lens) {
    my (undef, undef, $b) = AaiTest::http_get($port, "/c/h$n");
    push @wrong, "h$n" unless ($b // '') eq 'b' x $n;
    my $p = "/c/s" . ('s' x $n);
    (undef, undef, $b) = AaiTest::http_get($port, $p);
    push @wrong, "s$n" unless ($b // '') eq "from upstream $p\n";
}
Test::More::is("@wrong", '', 'hand-made entries served, the others '
                             . 'fetched, at every length');
--- request
GET /c/h0
--- response_body eval
''
--- aai_after
my $bad = 0;
for my $n (@::Lens) {
    my $key = key_of("httpGETlocalhost/c/s" . ('s' x $n));
    my $e;
    for (1 .. 100) {
        last if defined($e = redis_cmd('GET', $key));
        sleep 0.02;
    }
    if (!defined $e
        || unpack('N', substr($e, -4))
           != Compress::Zlib::crc32(substr($e, 0, -4)))
    {
        diag("entry of /c/s x $n: " . (defined $e ? 'bad crc' : 'absent'));
        $bad++;
    }
}
is($bad, 0, 'every stored entry has the crc32 of zlib');
--- no_error_log
[warn]
