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
use AaiTest qw( :DEFAULT :util );
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
sub origin {
    return AaiTest::start_origin(\%Routes, log => $origin_log);
}

sub origin_count {
    my $re = shift;
    return scalar grep { /$re/ } file_lines($origin_log);
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
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c056fresh', $oport);

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
    wait_cache_entries(1);
    my ($s2, $h2) = http_get($port, '/age-abc');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS HIT',
       'an invalid Age is ignored');

    ($s1, $h1) = http_get($port, '/expires-good');
    wait_cache_entries(2);
    ($s2, $h2) = http_get($port, '/expires-good');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS HIT',
       'Expires an hour after Date is fresh');

    ($s1, $h1) = http_get($port, '/age-30');
    wait_cache_entries(3);

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
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c056hop', $oport);

    my ($s1, $h1) = http_get($port, '/hop');
    wait_cache_entries(1);
    my ($s2, $h2, $b2) = http_get($port, '/hop');
    is("$h2->{'x-status'} $b2", "HIT hop\n", 'Connection: a hit');
    is($h2->{'x-end'}, '3', 'an end-to-end header is stored');
    ok(!defined $h2->{'x-hop-a'} && !defined $h2->{'x-hop-b'},
       'the headers Connection names are not stored');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- CDN-Cache-Control and aai_cache_control_field (RFC 9213) --------------

{
    my $exp = sub { time2str(time + 3600) };
    local %Routes = (
        '/cdn-private' => sub {
            (200, [ 'CDN-Cache-Control' => 'private',
                    'Cache-Control' => 'max-age=10000', Expires => $exp->() ],
             "p\n") },
        '/cdn-no-cache' => sub {
            (200, [ 'CDN-Cache-Control' => 'no-cache',
                    'Cache-Control' => 'max-age=10000' ], "nc\n") },
        '/cdn-no-store' => sub {
            (200, [ 'Cache-Control' => 'max-age=10000',
                    'CDN-Cache-Control' => 'no-store' ], "ns\n") },
        '/cdn-short' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600',
                    'CDN-Cache-Control' => 'max-age=0' ], "short\n") },
        '/cdn-over-no-store' => sub {
            (200, [ 'Cache-Control' => 'no-store',
                    'CDN-Cache-Control' => 'max-age=10000' ], "long\n") },
        '/cdn-invalid' => sub {
            (200, [ 'Cache-Control' => 'no-store',
                    'CDN-Cache-Control' => 'max-age=abc' ], "invalid\n") },
        '/cdn-not-sf' => sub {
            (200, [ 'Cache-Control' => 'no-store',
                    'CDN-Cache-Control' => 'max-age=10000, &&&&&' ], "sf\n") },
        '/cdn-string' => sub {
            (200, [ 'Cache-Control' => 'no-store',
                    'CDN-Cache-Control' => 'max-age="10000"' ], "str\n") },
        '/own' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600',
                    'CDN-Cache-Control' => 'max-age=3600',
                    'Acme-Cache-Control' => 'no-store' ], "own\n") },
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c056cdn', $oport);

    for my $p (qw( /cdn-private /cdn-no-cache /cdn-no-store /cdn-short
                   /cdn-invalid /cdn-not-sf /cdn-string ))
    {
        my ($s1, $h1) = http_get($port, $p);
        my ($s2, $h2) = http_get($port, $p);
        is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS MISS',
           "$p: not stored");
    }

    my ($s1, $h1) = http_get($port, '/cdn-over-no-store');
    wait_cache_entries(1);
    my ($s2, $h2, $b2) = http_get($port, '/cdn-over-no-store');
    is("$h2->{'x-status'} $b2", "HIT long\n",
       'CDN-Cache-Control max-age wins over Cache-Control no-store');
    like($h2->{'cache-status'}, qr/ttl=(99\d\d|10000)$/,
         'its freshness is CDN-Cache-Control max-age');

    # a field of one's own first, then CDN-Cache-Control

    my ($oport2, $stop2) = cache_front('c056own', $oport,
        'aai_cache_control_field Acme-Cache-Control CDN-Cache-Control;');
    ($s1, $h1) = http_get($oport2, '/own');
    ($s2, $h2) = http_get($oport2, '/own');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS MISS',
       'aai_cache_control_field: the own field has precedence');
    like($h1->{'cache-status'}, qr/detail=no-store/, 'its no-store');

    my ($oport3, $stop3) = cache_front('c056off', $oport,
        'aai_cache_control_field off;');
    ($s1, $h1) = http_get($oport3, '/cdn-no-store');
    wait_cache_entries(2);
    ($s2, $h2) = http_get($oport3, '/cdn-no-store');
    is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS HIT',
       'aai_cache_control_field off: Cache-Control alone');

    $stop3->();
    $stop2->();
    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- invalidation by unsafe methods (RFC 9111, 4.4) ------------------------

{
    my $n = 0;
    my $res = sub {
        my ($method, $target, $head) = @_;
        $n++;
        return (200, [ 'Cache-Control' => 'max-age=3600',
                       Vary => 'Accept-Language' ], "v$n\n")
            if $method eq 'GET';
        return (500, [], "failed\n") if $target =~ /fail/;
        return (201, [ Location => '/loc',
                       'Content-Location' => "http://localhost/cl" ],
                "made\n") if $target =~ /make/;
        return (201, [ Location => 'http://elsewhere.example/other' ],
                "made\n") if $target =~ /away/;
        return (200, [], "done\n");
    };
    local %Routes = map { $_ => $res } qw( /inv /loc /cl /other );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c056inv', $oport);

    my $prime = sub {
        my ($path, @langs) = @_;
        for my $l (@langs) {
            http_get($port, $path, { 'Accept-Language' => $l });
        }
    };
    my $cached = sub {
        my ($path, $lang) = @_;
        my ($s, $h) = http_get($port, $path, { 'Accept-Language' => $lang });
        return $h->{'x-status'};
    };
    my $entries = \&cache_entry_keys;

    for my $m (qw( POST PUT DELETE M-SEARCH )) {
        redis_flushdb();
        $prime->("/inv?$m", 'en', 'fr');
        is(wait_cache_entries(4), 4, "$m: two variants, their vary record, set");
        is($cached->("/inv?$m", 'fr'), 'HIT', "$m: stored first");

        my ($s) = http_get($port, "/inv?$m", {}, $m, 'x');
        is($s, 200, "$m: done upstream");
        my $left = -1;
        for (1 .. 100) {
            $left = $entries->();
            last if $left == 0;
            sleep 0.02;
        }
        is($left, 0, "$m: every variant deleted from redis");
        is($cached->("/inv?$m", 'en') . ' ' . $cached->("/inv?$m", 'fr'),
           'MISS MISS', "$m: the next GETs go upstream");
        wait_cache_entries(4);    # they are stored again: not in the next round
    }

    # a failed unsafe request invalidates nothing
    redis_flushdb();
    $prime->('/inv?fail', 'en');
    wait_cache_entries(3);
    my ($s) = http_get($port, '/inv?fail', {}, 'POST', 'x');
    is($s, 500, 'failed POST');
    sleep 0.2;
    is($cached->('/inv?fail', 'en'), 'HIT', 'a failed POST keeps the entry');

    # Location and Content-Location on the same host; not another host's
    redis_flushdb();
    $prime->($_, 'en') for qw( /loc /cl /other );
    wait_cache_entries(9);
    ($s) = http_get($port, '/inv?make', {}, 'POST', 'x');
    is($s, 201, 'POST that makes a resource');
    ($s) = http_get($port, '/inv?away', {}, 'POST', 'x');
    my $left = -1;
    for (1 .. 100) {
        $left = $entries->();
        last if $left == 3;
        sleep 0.02;
    }
    is($left, 3, 'Location and Content-Location entries deleted');
    is(join(' ', map { $cached->($_, 'en') } qw( /loc /cl /other )),
       'MISS MISS HIT', 'only the same host is invalidated');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- conditional requests answered from a stored entry (RFC 9110, 13.2.2) -

{
    local %Routes = (
        '/cond' => sub {
            (200, [ 'Cache-Control' => 'max-age=3600', ETag => '"abcdef"',
                    'Last-Modified' => time2str(time - 5000) ], "cond\n") },
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c056cond', $oport);

    my (undef, $h0) = http_get($port, '/cond');
    wait_cache_entries(1);

    my ($s, $h) = http_get($port, '/cond', {
        'If-None-Match' => '"abcdef"',
        'If-Modified-Since' => time2str(time - 10000) });
    is("$s $h->{'x-status'}", '304 HIT',
       'a matching If-None-Match wins over a failing If-Modified-Since');

    ($s, $h) = http_get($port, '/cond', {
        'If-None-Match' => '"other"',
        'If-Modified-Since' => time2str(time) });
    is("$s $h->{'x-status'}", '200 HIT',
       'a failing If-None-Match wins over a matching If-Modified-Since');

    # (if_modified_since exact, nginx's default)
    ($s, $h) = http_get($port, '/cond', {
        'If-Modified-Since' => $h0->{'last-modified'} });
    is("$s $h->{'x-status'}", '304 HIT', 'If-Modified-Since alone');
    is(origin_count(qr{^GET /cond}), 1, 'all from the cache');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


add_block_preprocessor(sub {
    redis_flushdb();
});

run_tests();

logs_once_more();

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



=== TEST 2: aai_cache_control_field takes response header names only
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        aai_cache on;
        aai_cache_control_field CDN-Cache-Control "Bad:Name";
    }
--- must_die
--- error_log
invalid field "Bad:Name" in "aai_cache_control_field": a response header name
