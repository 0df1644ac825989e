# ngx_http_aai_cache_module against RFC 9111 where the public HTTP cache
# test suite (cache-tests.fyi, bench/conformance) found it wrong (issue 16):
# freshness arithmetic (invalid Expires, Age parsing, the Age and Date of a
# hit), Connection-listed headers, CDN-Cache-Control (RFC 9213),
# invalidation by unsafe methods.
#
# The origin is a small Perl server of this file, so that every header of
# its responses (Date, Age, Connection) is the test's; it logs each request
# it serves ("METHOD PATH") to a file: origin_count() counts there.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use HTTP::Date qw( time2str str2time );
use IO::Socket::INET;
use Time::HiRes qw( sleep time );
use POSIX ();
use File::Path qw( make_path );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $origin_log = server_root() . '-origin056/requests.log';
make_path(server_root() . '-origin056');
unlink $origin_log;

# path (without the query) => sub returning (status, [headers], body)
our %Routes;

sub start_origin {
    my $l = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, ReuseAddr => 1)
        or die "origin: listen: $!";
    my $port = $l->sockport;
    my $pid = fork // die "origin: fork: $!";
    if ($pid) {
        close $l;
        return ($port, $pid);
    }
    $SIG{$_} = 'DEFAULT' for qw( TERM INT HUP );
    my $end = time + 300;
    while (time < $end) {
        my $c = $l->accept or next;
        my $head = '';
        while ($head !~ /\r\n\r\n/) {
            my $n = sysread($c, $head, 4096, length $head);
            last unless $n;
        }
        my ($method, $target) = $head =~ m{^(\S+) (\S+)};
        next unless defined $target;
        if ($head =~ /^Content-Length:\s*(\d+)/mi) {
            my $want = $1 - (length($head) - index($head, "\r\n\r\n") - 4);
            while ($want > 0) {
                my $n = sysread($c, my $b, $want);
                last unless $n;
                $want -= $n;
            }
        }
        my ($path) = $target =~ m{^([^?]*)};
        my $route = $Routes{$path} || sub { (404, [], "no route\n") };
        my ($status, $hdrs, $body) = $route->($method, $target, $head);
        my $out = "HTTP/1.1 $status X\r\n";
        my @h = @$hdrs;
        while (my ($k, $v) = splice(@h, 0, 2)) {
            $out .= "$k: $v\r\n";
        }
        $out .= "Content-Length: " . length($body) . "\r\n"
                . "Connection: close\r\n\r\n$body";
        syswrite($c, $out);
        close $c;
        if (open my $log, '>>', $origin_log) {
            print $log "$method $target\n";
            close $log;
        }
    }
    POSIX::_exit(0);
}

sub origin_count {
    my $re = shift;
    return scalar grep { /$re/ } file_lines($origin_log);
}

# an entry is stored after its response has gone: wait for it in Redis
sub wait_entries {
    my $want = shift;
    for (1 .. 150) {
        my $n = scalar @{ redis_cmd('KEYS', 'aai:c:*') };
        return $n if $n >= $want;
        sleep 0.02;
    }
    return scalar @{ redis_cmd('KEYS', 'aai:c:*') };
}

sub front {
    my ($name, $origin_port, $extra) = @_;
    $extra //= '';
    return start_nginx_instance($name, <<"_EOC_");
    aai_cache_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / {
            aai_cache on;
            $extra
            add_header X-Status \$aai_cache_status;
            proxy_pass http://127.0.0.1:$origin_port;
        }
    }
_EOC_
}


# --- freshness arithmetic (RFC 9111, 4.2, 5.1, 5.3) ------------------------

{
    local %Routes = (
        '/expires-utc' => sub {
            (200, [ Expires => 'Thu, 18 Aug 2050 02:01:18 UTC' ], "utc\n") },
        '/expires-aest' => sub {
            (200, [ Expires => 'Thu, 18 Aug 2050 02:01:18 AEST' ], "aest\n") },
        '/expires-before-date' => sub {
            (200, [ Date => time2str(time + 400),
                    Expires => time2str(time + 300) ], "old\n") },
        '/expires-age' => sub {
            (200, [ Date => time2str(time - 10), Expires => time2str(time + 10),
                    Age => '25' ], "aged\n") },
        '/expires-good' => sub {
            (200, [ Date => time2str(time),
                    Expires => time2str(time + 3600) ], "good\n") },
        '/age-list' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600', Age => '7200, 0' ],
             "list\n") },
        '/age-abc' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600', Age => 'abc' ],
             "abc\n") },
        '/age-30' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600', Age => '30',
                    Date => time2str(time) ], "thirty\n") },
    );

    redis_flushdb();
    my ($oport, $opid) = start_origin();
    my ($port, $stop) = front('c056fresh', $oport);

    for my $p (qw( /expires-utc /expires-aest /expires-before-date
                   /expires-age /age-list ))
    {
        my ($s1, $h1) = http_get($port, $p);
        my ($s2, $h2) = http_get($port, $p);
        is("$s1 $h1->{'x-status'} $s2 $h2->{'x-status'}",
           "200 MISS 200 MISS", "$p: never stored");
        like($h1->{'cache-status'}, qr/detail=(expired|zero-ttl)/,
             "$p: stale on arrival");
    }

    my ($s1, $h1) = http_get($port, '/age-abc');
    wait_entries(1);
    my ($s2, $h2) = http_get($port, '/age-abc');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS HIT',
       'an invalid Age is ignored');

    ($s1, $h1) = http_get($port, '/expires-good');
    wait_entries(2);
    ($s2, $h2) = http_get($port, '/expires-good');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS HIT',
       'Expires an hour after Date is fresh');

    ($s1, $h1) = http_get($port, '/age-30');
    wait_entries(3);

    # the next second, so that a Date made at the hit would differ
    sleep(int(time) + 1.05 - time);

    ($s2, $h2) = http_get($port, '/age-30');
    is($h2->{'x-status'}, 'HIT', 'Age 30: a hit');
    ok($h2->{age} >= 30 && $h2->{age} <= 40,
       "the hit's Age counts the Age on arrival and the time since "
       . "($h2->{age})");
    is($h2->{date}, $h1->{date}, "the hit has the origin's Date");
    is(scalar(() = ($h2->{date} // '') =~ /GMT/g), 1, 'one Date');
    is(origin_count(qr{^GET /age-30}), 1, 'one request upstream');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- headers listed in Connection are never stored (RFC 9111, 3.1) ---------

{
    local %Routes = (
        '/hop' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600',
                    Connection => 'X-Hop-A, x-hop-b', 'X-Hop-A' => '1',
                    'X-Hop-B' => '2', 'X-End' => '3' ], "hop\n") },
    );

    redis_flushdb();
    my ($oport, $opid) = start_origin();
    my ($port, $stop) = front('c056hop', $oport);

    my ($s1, $h1) = http_get($port, '/hop');
    wait_entries(1);
    my ($s2, $h2, $b2) = http_get($port, '/hop');
    is("$h2->{'x-status'} $b2", "HIT hop\n", 'Connection: a hit');
    is($h2->{'x-end'}, '3', 'an end-to-end header is stored');
    ok(!defined $h2->{'x-hop-a'} && !defined $h2->{'x-hop-b'},
       'the headers Connection names are not stored');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


add_block_preprocessor(sub {
    redis_flushdb();
});

run_tests();

__DATA__

=== TEST 1: the module loads with the conformance directives
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        aai_cache on;
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- no_error_log
[error]
