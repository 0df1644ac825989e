# aai_cache_revalidate (issue 16): stale entries are validated upstream with
# If-None-Match / If-Modified-Since made of the stored validators; a 304
# updates the entry in Redis (headers, Date, freshness) and the client gets
# the stored body; must-revalidate, proxy-revalidate and no-cache entries
# are never served stale; a 200 replaces the entry.
#
# The origin is a small Perl server of this file; it logs each request it
# serves as "METHOD PATH inm=<If-None-Match> ims=<If-Modified-Since>".

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use HTTP::Date qw( time2str );
use IO::Socket::INET;
use Time::HiRes qw( sleep time );
use POSIX ();
use File::Path qw( make_path );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $dir = server_root() . '-origin057';
make_path($dir);
my $origin_log = "$dir/requests.log";
unlink $origin_log;

# path => sub (method, target, head) returning (status, [headers], body)
our %Routes;
# routes take (method, If-None-Match, If-Modified-Since, head)
sub origin {
    return AaiTest::start_origin(\%Routes, log => $origin_log,
                                 args => sub { @_[0, 3, 4, 2] });
}

sub origin_lines {
    my $re = shift;
    return grep { /$re/ } file_lines($origin_log);
}

# the one entry key of a path (the default key: GET, localhost)
sub entry_of {
    my $path = shift;
    my $sha = Digest::SHA::sha256_hex("httpGETlocalhost$path");
    return "aai:c:$sha";
}


use Digest::SHA ();

my $lm = 'Wed, 01 Jan 2020 00:00:00 GMT';
my $n304 = 0;

# 304 when the validator matches, else 200 with it
sub validated {
    my ($etag, $cc, $body, $cc304) = @_;
    return sub {
        my ($method, $inm, $ims) = @_;
        if (defined $inm && $inm eq $etag) {
            $n304++;
            return (304, [ ETag => $etag, Date => time2str(time),
                           'Cache-Control' => $cc304,
                           'X-Updated' => "u$n304" ], '');
        }
        return (200, [ ETag => $etag, 'Cache-Control' => $cc,
                       Date => time2str(time), 'X-Updated' => 'u0' ], $body);
    };
}


# --- If-None-Match, a 304 refreshes the entry for the next requests --------

{
    my $v = 0;
    local %Routes = (
        '/etag' => validated('"e1"', 'max-age=0', "etag body\n",
                             'max-age=3600'),
        '/lm' => sub {
            my ($method, $inm, $ims) = @_;
            return (304, [ 'Cache-Control' => 'max-age=3600',
                           'X-Updated' => 'lm' ], '')
                if defined $ims && $ims eq $lm;
            return (200, [ 'Last-Modified' => $lm,
                           'Cache-Control' => 'max-age=0' ], "lm body\n");
        },
        '/expiring' => validated('"x1"', 'max-age=1', "expiring\n",
                                 'max-age=1'),
        '/replaced' => sub {
            $v++;
            return (200, [ ETag => "\"r$v\"", 'Cache-Control' => 'max-age=0',
                           'X-Version' => $v ], "version $v\n");
        },
        '/client' => validated('"c1"', 'max-age=0', "client\n", 'max-age=0'),
        '/swr' => validated('"s1"', 'max-age=1, stale-while-revalidate=60',
                            "swr\n", 'max-age=3600'),
        '/plain' => sub {
            (200, [ 'Cache-Control' => 'max-age=1' ], "plain\n") },
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c057etag', $oport,
                              'aai_cache_revalidate on;');

    my ($s1, $h1, $b1) = http_get($port, '/etag');
    is("$s1 $h1->{'x-status'} $b1", "200 MISS etag body\n",
       'max-age=0 with an ETag: a miss');
    like($h1->{'cache-status'}, qr/stored/, 'stored, stale');
    wait_cache_entries(1);
    my $ttl = redis_cmd('PTTL', entry_of('/etag'));
    ok($ttl > 500_000 && $ttl <= 600_000,
       "kept for aai_cache_revalidate_ttl (10m by default): $ttl ms");

    my ($s2, $h2, $b2) = http_get($port, '/etag',
                                  { 'If-None-Match' => '"zz"' });
    is("$s2 $h2->{'x-status'} $b2", "200 REVALIDATED etag body\n",
       'revalidated: the stored body, the client\'s condition not passed on');
    is($h2->{'x-updated'}, 'u1', 'with the headers of the 304');
    like($h2->{'cache-status'},
         qr/fwd=stale; fwd-status=304; ttl=3\d\d\d; stored/,
         'Cache-Status: forwarded stale, 304, new ttl');
    my @l = origin_lines(qr{^GET /etag});
    is(scalar @l, 2, 'two requests upstream');
    like($l[1], qr/inm="e1" ims=-$/, 'the second with the stored ETag');

    ok(wait_until(5, sub {
        (redis_cmd('GET', entry_of('/etag')) // '') =~ /X-Updated\0\0\0\0\x02u1/
    }), 'Redis holds the updated header');

    my ($s3, $h3, $b3) = http_get($port, '/etag');
    is("$h3->{'x-status'} $b3 $h3->{'x-updated'}", "HIT etag body\n u1",
       'then a hit with the updated headers');
    is($h3->{etag}, '"e1"', 'and the stored ETag');
    is(scalar(origin_lines(qr{^GET /etag})), 2, 'no third request upstream');

    # Last-Modified

    http_get($port, '/lm');
    wait_cache_entries(2);
    my ($s4, $h4, $b4) = http_get($port, '/lm');
    is("$h4->{'x-status'} $b4 $h4->{'x-updated'}", "REVALIDATED lm body\n lm",
       'Last-Modified: revalidated');
    @l = origin_lines(qr{^GET /lm});
    like($l[1], qr/inm=- ims=\Q$lm\E$/, 'with If-Modified-Since');
    is($h4->{'last-modified'}, $lm, 'the stored Last-Modified');

    # the client's own conditions, against the entry once validated

    http_get($port, '/client');
    wait_cache_entries(3);
    my ($sc, $hc, $bc) = http_get($port, '/client',
                                  { 'If-None-Match' => 'W/"x", W/"c1"' });
    is("$sc $hc->{'x-status'} $bc", '304 REVALIDATED ',
       'If-None-Match of the client: a 304 after validation');
    is($hc->{etag}, '"c1"', 'with the ETag');
    like((origin_lines(qr{^GET /client}))[-1], qr/inm="c1" ims=-$/,
         'the upstream got the stored ETag, not the client\'s list');
    ($sc, $hc, $bc) = http_get($port, '/client', { 'If-None-Match' => '"zz"' });
    is("$sc $hc->{'x-status'} $bc", "200 REVALIDATED client\n",
       'an If-None-Match that does not match: the body');
    ($sc, $hc, $bc) = http_get($port, '/lm', { 'If-Modified-Since' => $lm });
    is("$sc $hc->{'x-status'} $bc", '304 HIT ',
       'If-Modified-Since on a hit: 304 (nginx)');
    http_get($port, '/replaced');    # v1, stale at once

    # an entry that was fresh is kept past its freshness to be revalidated;
    # within stale-while-revalidate it is served at once, updated behind

    my ($s5, $h5) = http_get($port, '/expiring');
    http_get($port, '/plain');
    http_get($port, '/swr');
    wait_cache_entries(7);
    ok(redis_cmd('PTTL', entry_of('/expiring')) > 500_000,
       'a fresh entry with a validator is kept longer');
    ok(redis_cmd('PTTL', entry_of('/plain')) <= 1000,
       'one without is not');
    ok(wait_until(3, sub {
        my (undef, $h) = http_get($port, '/expiring');
        $h->{'x-status'} eq 'REVALIDATED'
    }), 'revalidated once stale');
    like((origin_lines(qr{^GET /expiring}))[-1], qr/inm="x1"/,
         'with its ETag');

    my ($ss, $hs, $bs);
    wait_until(3, sub {
        ($ss, $hs, $bs) = http_get($port, '/swr');
        $hs->{'x-status'} ne 'HIT'
    });
    is("$hs->{'x-status'} $bs", "STALE swr\n",
       'stale-while-revalidate: served stale without aai_cache_use_stale');
    like($hs->{'cache-status'}, qr/detail=background-update/,
         'and updated in the background');
    ok(wait_until(5, sub {
        my (undef, $h) = http_get($port, '/swr');
        $h->{'x-status'} eq 'HIT' && ($h->{'x-updated'} // '') ne 'u0'
    }), 'then a hit, updated by a 304');
    like((origin_lines(qr{^GET /swr}))[-1], qr/inm="s1"/,
         'the background update was conditional');

    # a 200 replaces the entry

    my ($s6, $h6, $b6) = http_get($port, '/replaced');
    is("$h6->{'x-status'} $b6", "EXPIRED version 2\n",
       'a 200 to the conditional request is sent');
    like((origin_lines(qr{^GET /replaced}))[-1], qr/inm="r1"/,
         'the conditional request');
    ok(wait_until(5, sub {
        (redis_cmd('GET', entry_of('/replaced')) // '') =~ /version 2/
    }), 'and replaces the entry');
    my ($s7, $h7, $b7) = http_get($port, '/replaced');
    like((origin_lines(qr{^GET /replaced}))[-1], qr/inm="r2"/,
         'the next one is made of its ETag');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- Vary: each variant is revalidated with its own validator ------------

{
    local %Routes = (
        '/vary' => sub {
            my ($method, $inm, $ims, $head) = @_;
            my ($lang) = $head =~ /^Accept-Language:\s*(\w+)/mi;
            $lang //= 'none';
            return (304, [ 'Cache-Control' => 'max-age=3600',
                           Vary => 'Accept-Language' ], '')
                if defined $inm && $inm eq "\"$lang\"";
            return (200, [ ETag => "\"$lang\"", 'Cache-Control' => 'max-age=0',
                           Vary => 'Accept-Language' ], "$lang\n");
        },
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c057vary', $oport,
                              'aai_cache_revalidate on;');

    my $get = sub {
        my ($s, $h, $b) = http_get($port, '/vary',
                                   { 'Accept-Language' => $_[0] });
        return "$h->{'x-status'} $b";
    };

    $get->('en');
    $get->('fr');
    wait_cache_entries(4);    # the vary record, two variants, their set
    is($get->('en'), "REVALIDATED en\n", 'Vary: en revalidated');
    like((origin_lines(qr{^GET /vary}))[-1], qr/inm="en"/,
         'Vary: with the ETag of its own variant');
    is($get->('en'), "HIT en\n", 'Vary: then en is a hit');
    is($get->('fr'), "REVALIDATED fr\n", 'Vary: fr is still stale');
    like((origin_lines(qr{^GET /vary}))[-1], qr/inm="fr"/,
         'Vary: with the ETag of fr');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- no-cache, must-revalidate, proxy-revalidate ---------------------------

{
    # the origin is another process: a file says it fails
    my $fail = sub { open my $f, '>', "$dir/fail-$_[0]"; close $f };
    my $route = sub {
        my ($name, $cc) = @_;
        return sub {
            my ($method, $inm, $ims) = @_;
            return (500, [], "failed\n") if -e "$dir/fail-$name";
            return (304, [ 'Cache-Control' => $cc ], '')
                if defined $inm && $inm eq "\"$name\"";
            return (200, [ ETag => "\"$name\"", 'Cache-Control' => $cc ],
                    "$name\n");
        };
    };
    local %Routes = (
        '/nc' => $route->('nc', 'no-cache'),
        '/ncfresh' => $route->('ncfresh', 'max-age=3600, no-cache'),
        '/mr' => $route->('mr', 'max-age=0, must-revalidate'),
        '/pr' => $route->('pr', 'max-age=0, proxy-revalidate'),
        '/st' => $route->('st', 'max-age=0'),
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c057nc', $oport,
        'aai_cache_revalidate on; aai_cache_use_stale error http_500;');

    for my $p (qw( /nc /ncfresh )) {
        my ($s1, $h1, $b1) = http_get($port, $p);
        like($h1->{'cache-status'}, qr/stored/, "$p: no-cache is stored");
        wait_until(5, sub { redis_cmd('EXISTS', entry_of($p)) });
        my ($s2, $h2, $b2) = http_get($port, $p);
        my ($s3, $h3, $b3) = http_get($port, $p);
        is("$h2->{'x-status'} $h3->{'x-status'} $b3",
           "REVALIDATED REVALIDATED " . substr($p, 1) . "\n",
           "$p: revalidated at each use");
        is(scalar(origin_lines(qr{^GET $p inm="})), 2,
           "$p: with its ETag each time");
    }

    for my $p (qw( /mr /pr /st )) {
        http_get($port, $p);
        wait_until(5, sub { redis_cmd('EXISTS', entry_of($p)) });
        my ($s2, $h2) = http_get($port, $p);
        is($h2->{'x-status'}, 'REVALIDATED', "$p: revalidated");
        $fail->(substr($p, 1));
    }

    my ($s, $h, $b) = http_get($port, '/mr');
    is($s, 500, 'must-revalidate: never served stale on error');
    like($h->{'cache-status'}, qr/fwd=stale; fwd-status=500/,
         'must-revalidate: the upstream\'s error');
    ($s, $h, $b) = http_get($port, '/pr');
    is($s, 500, 'proxy-revalidate: never served stale on error');
    like($h->{'cache-status'}, qr/fwd=stale; fwd-status=500/,
         'proxy-revalidate: the upstream\'s error');
    ($s, $h, $b) = http_get($port, '/st');
    is("$s $h->{'x-status'} $b", "200 STALE st\n",
       'without them: served stale on error');

    $stop->();
    kill 'TERM', $opid;
    waitpid $opid, 0;
}


# --- aai_cache_revalidate off (the default), aai_cache_revalidate_ttl ------

{
    local %Routes = (
        '/off' => validated('"o1"', 'max-age=0', "off\n", 'max-age=3600'),
        '/offnc' => sub {
            (200, [ ETag => '"n"', 'Cache-Control' => 'no-cache' ], "nc\n") },
        '/ttl' => validated('"t1"', 'max-age=1', "ttl\n", 'max-age=1'),
    );

    redis_flushdb();
    my ($oport, $opid) = origin();
    my ($port, $stop) = cache_front('c057off', $oport);

    for my $p (qw( /off /offnc )) {
        my ($s1, $h1) = http_get($port, $p);
        my ($s2, $h2) = http_get($port, $p);
        is("$h1->{'x-status'} $h2->{'x-status'}", 'MISS MISS',
           "off: $p not stored");
        is(scalar(origin_lines(qr{^GET $p inm=-})), 2,
           "off: $p never conditional");
    }

    my ($port2, $stop2) = cache_front('c057ttl', $oport,
        'aai_cache_revalidate on; aai_cache_revalidate_ttl 30s;');
    http_get($port2, '/ttl');
    wait_cache_entries(1);
    my $ttl = redis_cmd('PTTL', entry_of('/ttl'));
    ok($ttl > 29_000 && $ttl <= 31_000,
       "aai_cache_revalidate_ttl 30s: kept 30 s past freshness ($ttl ms)");

    $stop2->();
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

=== TEST 1: the directives
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_cache_revalidate on;
    aai_cache_revalidate_ttl 1h;
--- config
    location /t {
        aai_cache on;
        aai_cache_revalidate off;
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- no_error_log
[error]



=== TEST 2: aai_cache_revalidate_ttl takes a time
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        aai_cache on;
        aai_cache_revalidate_ttl forever;
    }
--- must_die
--- error_log
invalid time "forever" in "aai_cache_revalidate_ttl"
