# What the README promises of the limiter and of JWT identity that no other
# file proves: delays logged one level below rejections, Redis failures
# logged once a second with the count of those not logged, the local
# zone's least recently used entries evicted when it is full,
# "connections=" above 1 used, the 255-zone limit of a location; JWT:
# "crit" is MALFORMED, "satisfy any" with aai_jwt_require, certificate and
# private key PEM files, key paths relative to the configuration folder,
# MALFORMED logged at info and other rejections at warn, the token never
# logged (not even at debug level); a request redirected internally is
# limited once.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use AaiJwt;
use IO::Socket::INET ();
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $tag = "r036$$";

sub grep_log {
    my ($prefix, $re) = @_;
    return grep { /$re/ } file_lines("$prefix/logs/error.log");
}


# --- delays are logged one level lower than rejections ---------------------

{
    redis_flushdb();
    my ($port, $stop, $prefix) = start_nginx_instance('rl036lvl', <<'_EOC_');
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=2s
                        connect_timeout=2s;
    aai_ratelimit_zone lvl_d key=$arg_u rate=2r/s burst=5 algorithm=gcra;
    aai_ratelimit_zone lvl_r key=$arg_u rate=1r/m;
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        aai_ratelimit_log_level warn;
        add_header X-RL $aai_ratelimit_status always;
        location /d { aai_ratelimit lvl_d; empty_gif; }
        location /r { aai_ratelimit lvl_r; empty_gif; }
        location /i {
            aai_ratelimit lvl_d;
            aai_ratelimit_log_level info;
            empty_gif;
        }
    }
_EOC_

    my @rl = map { (http_get($port, "/d?u=$tag-d"))[1]{'x-rl'} // '' } 1 .. 2;
    is("@rl", 'PASSED DELAYED', 'log level: the second request is delayed');
    @rl = map { (http_get($port, "/r?u=$tag-r"))[1]{'x-rl'} // '' } 1 .. 2;
    is("@rl", 'PASSED REJECTED', 'log level: the second request is rejected');
    @rl = map { (http_get($port, "/i?u=$tag-i"))[1]{'x-rl'} // '' } 1 .. 2;
    is("@rl", 'PASSED DELAYED', 'log level info: delayed');

    my @delay = grep_log($prefix, qr/delaying request by \d+ ms by aai_ratelimit zone "lvl_d"/);
    my @limit = grep_log($prefix, qr/limiting requests by aai_ratelimit zone "lvl_r"/);
    is(scalar @delay, 2, 'two delays logged');
    like($delay[0] // '', qr/\[notice\]/,
         'aai_ratelimit_log_level warn: the delay is logged at notice');
    is(scalar @limit, 1, 'one rejection logged');
    like($limit[0] // '', qr/\[warn\]/, 'and the rejection at warn');
    like($delay[1] // '', qr/\[info\]/,
         'aai_ratelimit_log_level info: the delay at info (nothing lower)');

    $stop->();
    no_log_problems("$prefix/logs/error.log", 'log level: no alert, no crash');
}


# --- Redis failures: one line a second, with the count of the others -------

{
    my $dead = free_port();
    my ($port, $stop, $prefix) = start_nginx_instance('rl036fail', <<"_EOC_");
    aai_ratelimit_redis 127.0.0.1:$dead timeout=200ms connect_timeout=200ms;
    aai_ratelimit_zone fail key=\$arg_u rate=10r/s;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location / { aai_ratelimit fail; empty_gif; }
    }
_EOC_

    my $re = qr/aai_ratelimit: Redis .*fallback "allow" \((\d+) similar errors not logged\)/;
    my $sent = 0;
    my $err = 0;
    for (1 .. 40) {
        my ($st, $h) = http_get($port, "/?u=$tag-$_");
        $sent++;
        $err++ if ($st // 0) == 200 && ($h->{'x-rl'} // '') eq 'ERROR';
    }
    is($err, 40, 'Redis refused: 40 requests pass with ERROR (fallback allow)');

    # a request in a later second logs again, with the count of the others:
    # send one at a time until one of them writes a line of its own
    my $t0 = int(time);
    my @lines = grep_log($prefix, $re);
    ok(wait_until(5, sub {
        my $before = @lines;
        http_get($port, "/?u=$tag-late");
        $sent++;
        @lines = grep_log($prefix, $re);
        return @lines > $before && time >= $t0 + 1
               && $lines[-1] =~ /\((\d+) similar/ && $1 > 0;
    }), 'a later second logs a line with the count not logged');

    my $seconds = int(time) - $t0 + 1;
    ok(@lines <= $seconds + 2,
       "at most a line a second: " . scalar(@lines) . " lines over "
       . "$seconds s for $sent failures");
    my $skipped = 0;
    $skipped += $_ for map { /\((\d+) similar/ ? $1 : 0 } @lines;
    # the last request wrote the last line: nothing after it uncounted
    is($skipped + @lines, $sent,
       "every failure logged or counted: " . scalar(@lines)
       . " lines + $skipped counted");

    $stop->();
    no_log_problems("$prefix/logs/error.log", 'failures: no alert, no crash');
}


# --- aai_ratelimit_local_zone: least recently used entries evicted ---------

{
    my $dead = free_port();
    my ($port, $stop, $prefix) = start_nginx_instance('rl036lru', <<"_EOC_");
    aai_ratelimit_redis 127.0.0.1:$dead timeout=200ms connect_timeout=200ms;
    aai_ratelimit_local_zone 32k;
    aai_ratelimit_zone lru key=\$arg_u rate=1r/h;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        aai_ratelimit_fallback local;
        location / { aai_ratelimit lru; empty_gif; }
    }
_EOC_

    my $pad = 'x' x 1000;
    my $st = sub { (http_get($port, "/?u=$_[0]"))[0] // 0 };

    is($st->("cold$pad") . ' ' . $st->("cold$pad"), '200 429',
       'local fallback: the cold key admitted once, then rejected');
    is($st->("hot$pad") . ' ' . $st->("hot$pad"), '200 429',
       'local fallback: the hot key admitted once, then rejected');

    # 60 keys of 1 kB do not fit in 32k: the zone must evict
    my $new_ok = 0;
    my $hot_rej = 0;
    for my $i (1 .. 60) {
        $new_ok++ if $st->("k$i$pad") == 200;
        if ($i % 3 == 0) {
            $hot_rej++ if $st->("hot$pad") == 429;
        }
    }
    is($new_ok, 60, 'every new key admitted while the zone is full');
    is($hot_rej, 20, 'the hot key stays rejected: recently used, kept');
    is($st->("hot$pad"), 429, 'the hot key is still rejected after the fill');
    is($st->("cold$pad"), 200,
       'the cold key was evicted (least recently used): admitted again');
    is(scalar grep_log($prefix, qr/could not allocate/), 0,
       'no "could not allocate" in the log');

    $stop->();
    no_log_problems("$prefix/logs/error.log", 'lru: no alert, no crash');
}


# --- connections=3: three connections per worker, all carrying checks ------

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rl036conn', <<"_EOC_");
    aai_ratelimit_redis 127.0.0.1:$rport timeout=3s connect_timeout=2s
                        connections=3;
    aai_ratelimit_zone conn key=\$arg_u rate=5r/m;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        location / { aai_ratelimit conn; empty_gif; }
    }
_EOC_

    my $clients = sub {
        my $l = redis_cmd_port($rport, 'CLIENT', 'LIST');
        my $me = redis_cmd_port($rport, 'CLIENT', 'ID');
        return grep { !/\bid=$me\b/ && /\S/ } split /\n/, $l;
    };
    my @c;
    ok(wait_until(5, sub { @c = $clients->(); @c == 3 }),
       'connections=3: the worker holds three connections: ' . scalar @c);

    # Redis paused for writes (scripts included): each request's check
    # waits on the connection with the fewest pending commands, so three
    # requests that reach nginx one after the other use all three
    my @socks;
    with_paused_redis($rport, 3000, sub {
        for my $i (1 .. 3) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $port, Proto => 'tcp',
                                          Timeout => 3) or die "connect: $!";
            print $s "GET /?u=$tag-c&n=$i HTTP/1.0\r\nHost: x\r\n\r\n";
            push @socks, $s;
            # its check is pending in Redis before the next request is sent
            ok(wait_until(3, sub {
                scalar(grep { /\bflags=\S*b/ } $clients->()) >= $i;
            }), "check $i pending in Redis");
        }
    }, mode => 'WRITE', unpause => 1);
    my @st;
    for my $s (@socks) {
        local $/;
        my $r = <$s> // '';
        push @st, $r =~ m{^HTTP/\S+ (\d+)} ? $1 : 'none';
    }
    is("@st", '200 200 200', 'the three checks admitted');
    @c = $clients->();
    my $used = grep { /\bcmd=(?:eval(?:sha)?|fcall)\b/ } @c;
    is($used, 3, 'each of the three connections carried a check')
        or diag(join "\n", @c);

    # and the limit is exact over the three connections
    my @more = map { (http_get($port, "/?u=$tag-c"))[0] // 0 } 1 .. 4;
    is("@more", '200 200 429 429', 'the limit of 5 holds across them');

    $stop->();
    stop_redis($rport);
    no_log_problems("$prefix/logs/error.log", 'connections: no alert, no crash');
}


# --- at most 255 zones in a location ----------------------------------------

{
    my $zones = join '', map {
        "    aai_ratelimit_zone z$_ key=\$arg_u rate=1000r/s;\n" } 1 .. 256;
    my $conf = sub {
        my $n = shift;
        return "    aai_ratelimit_redis 127.0.0.1:\$TEST_NGINX_REDIS_PORT"
            . " timeout=3s;\n"
            . $zones
            . "    server {\n        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;\n"
            . "        location / {\n"
            . join('', map { "            aai_ratelimit z$_;\n" } 1 .. $n)
            . "            empty_gif;\n        }\n    }\n";
    };

    my ($rc, $out) = nginx_t($conf->(256));
    isnt($rc, 0, '256 zones in a location fail nginx -t');
    like($out, qr/too many zones in "aai_ratelimit", at most 255/,
         'naming the directive and the bound');

    redis_flushdb();
    my ($port, $stop, $prefix) = start_nginx_instance('rl036z255',
                                                      $conf->(255));
    my @cmds;
    my $st;
    http_get($port, '/?u=warm');       # the library loaded, if it was not
    redis_flushdb();
    @cmds = grep { $_->{client} ne 'lua' }
            redis_monitor(sub { $st = (http_get($port, '/?u=z'))[0] });
    is($st, 200, '255 zones: the request is admitted');
    my @ev = grep { $_->{args}[0] =~ /^(?:EVAL|FCALL)/i } @cmds;
    is(scalar @ev, 1, '255 zones: checked with one command');
    is(scalar @{ redis_cmd('KEYS', 'aai:rl:z*') }, 255,
       '255 zones: 255 keys counted');
    $stop->();
    no_log_problems("$prefix/logs/error.log", '255 zones: no alert, no crash');
}


# --- JWT ---------------------------------------------------------------------

my $jwt = jwt_dir();
my $keys = AaiTest::_servroot() . "-036keys";
system('rm', '-rf', $keys);
mkdir $keys or die "mkdir $keys: $!";
system('cp', "$jwt/rsa.pub", "$keys/rel.pub") == 0 or die 'cp';
system("openssl req -x509 -new -key '$jwt/rsa.key' -subj /CN=aai-test "
       . "-days 2 -out '$keys/cert.pem' 2>/dev/null") == 0
    or die 'openssl req failed';
(my $rel = $keys) =~ s{.*/}{};

my ($jport, $jstop, $jprefix) = start_nginx_instance('jwt036', <<"_EOC_");
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-JWT "\$aai_jwt_status \$aai_user" always;

        location /pub {
            aai_jwt_key rs256 file=$jwt/rsa.pub;
            empty_gif;
        }
        location /cert {
            aai_jwt_key rs256 file=$keys/cert.pem;
            empty_gif;
        }
        location /rel {
            # the configuration folder is <prefix>/conf/: ../../ is t/
            aai_jwt_key rs256 file=../../$rel/rel.pub;
            empty_gif;
        }
        location /any-allow {
            aai_jwt_key rs256 file=$jwt/rsa.pub;
            aai_jwt_require on;
            satisfy any;
            allow 127.0.0.1;
            deny all;
            empty_gif;
        }
        location /any-deny {
            aai_jwt_key rs256 file=$jwt/rsa.pub;
            aai_jwt_require on;
            satisfy any;
            deny all;
            empty_gif;
        }
        location /all-allow {
            aai_jwt_key rs256 file=$jwt/rsa.pub;
            aai_jwt_require on;
            allow 127.0.0.1;
            empty_gif;
        }
    }
_EOC_

sub jget {
    my ($path, $token) = @_;
    my ($st, $h) = http_get($jport, $path,
                            defined $token
                            ? { Authorization => "Bearer $token" } : {});
    return join ' ', $st // 'none', $h->{'x-jwt'} // '';
}

# crit: no extension is understood, so a token naming any is MALFORMED
is(jget('/pub', jwt(alg => 'RS256', claims => { sub => 'c1' })),
   '200 VALID c1', 'crit: the same token without crit is valid');
is(jget('/pub', jwt(alg => 'RS256', claims => { sub => 'c1' },
                    header => { crit => ['exp'] })),
   '200 MALFORMED ', 'crit: a token with a crit header is MALFORMED');
is(jget('/pub', jwt(alg => 'RS256', claims => { sub => 'c1' },
                    header => { crit => [] })),
   '200 MALFORMED ', 'crit: even an empty crit list');

# PEM files: a certificate, or a private key whose public half is used
is(jget('/cert', jwt(alg => 'RS256', claims => { sub => 'cert' })),
   '200 VALID cert', 'a certificate PEM verifies its key\'s tokens');
is(jget('/cert', jwt(alg => 'RS256', key => 'rsa2.key')),
   '200 BAD_SIGNATURE ', 'and refuses another key\'s');

# a private key PEM: its public half is used (README, aai_jwt_key)
system("openssl rsa -in '$jwt/rsa.key' -traditional -out '$keys/rsa.trad.key'"
       . " 2>/dev/null");
{
    for my $k ("$jwt/rsa.key rs256 RS256", "$keys/rsa.trad.key rs256 RS256",
               "$jwt/ec256.key es256 ES256")
    {
        my ($file, $alg, $ALG) = split / /, $k;
        my ($rc, $out) = nginx_t("    aai_jwt_key $alg file=$file;\n");
        is($rc, 0, "a private key PEM is accepted: $file") or diag($out);
        next if $rc;
        my ($p, $stop) = start_nginx_instance('jwt036priv', <<"_EOC_");
    aai_jwt_key $alg file=$file;
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        location / { return 200 "\$aai_jwt_status\$aai_user"; }
    }
_EOC_
        my $t = jwt(alg => $ALG, claims => { sub => 'priv' });
        is((http_get($p, '/', { Authorization => "Bearer $t" }))[2],
           'VALIDpriv', "its public half verifies: $file");
        $stop->();
    }
}

# relative paths: from the configuration folder, not the prefix
is(jget('/rel', jwt(alg => 'RS256', claims => { sub => 'rel' })),
   '200 VALID rel', 'a relative key path is read from the conf folder');

# satisfy any: access granted by "allow" or by a valid token
is(jget('/any-allow'), '200 NONE ', 'satisfy any: allowed address, no token');
is(jget('/any-deny', jwt(alg => 'RS256', claims => { sub => 'sa' })),
   '200 VALID sa', 'satisfy any: denied address, a valid token');
like(jget('/any-deny'), qr/^(401|403) NONE $/,
     'satisfy any: denied address, no token: refused');
is(jget('/all-allow'), '401 NONE ',
   'satisfy all (default): allowed address, no token: 401');

# log levels, and the token never logged: MALFORMED and EXPIRED at info,
# others at warn
my $secret_sub = "s3cr3t-sub-$$";
my %tok = (
    valid => jwt(alg => 'RS256', claims => { sub => $secret_sub }),
    badsig => jwt(alg => 'RS256', key => 'rsa2.key',
                  claims => { sub => "$secret_sub-b" }),
    malformed => jwt(alg => 'RS256', raw_payload => "{\"sub\":\"$secret_sub-m\",",
                     sign_alg => 'RS256'),
    expired => jwt(alg => 'RS256', claims => { sub => "$secret_sub-e",
                                               exp => time - 100 }),
);
my $got = join ', ', map { jget('/pub', $tok{$_}) } qw(valid badsig malformed
                                                      expired);
is($got, "200 VALID $secret_sub, 200 BAD_SIGNATURE , 200 MALFORMED , "
         . "200 EXPIRED ", 'the four tokens verify as expected');

my @rej = grep_log($jprefix, qr/aai_jwt: token rejected/);
my ($bad)  = grep { /BAD_SIGNATURE/ } @rej;
my ($malf) = grep { /MALFORMED/ } @rej;
my ($exp)  = grep { /EXPIRED/ } @rej;
like($bad // '', qr/\[warn\]/, 'BAD_SIGNATURE logged at warn');
like($exp // '', qr/\[info\]/, 'EXPIRED logged at info');
like($malf // '', qr/\[info\]/, 'MALFORMED logged at info');

$jstop->();

# the whole debug log (request lines are logged with their headers at
# debug level by nginx itself, but never by the module)
my @log = file_lines("$jprefix/logs/error.log");
my @leak;
for my $name (sort keys %tok) {
    my @parts = split /\./, $tok{$name};
    for my $p (@parts[1, 2]) {
        next unless defined $p && length $p > 16;
        push @leak, grep { index($_, $p) >= 0 && !/http header: "Authorization/ }
                    @log;
    }
}
is(scalar @leak, 0, 'no part of a token in the debug log (but nginx\'s own '
                    . 'header line)') or diag(@leak[0 .. 2]);
ok(scalar(grep { /http header: "Authorization/ } @log) > 0,
   'the log is at debug level (nginx logs the header itself)');
no_log_problems("$jprefix/logs/error.log", 'jwt: no alert, no crash');
system('rm', '-rf', $keys);

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: crit in the runner's nginx too: MALFORMED, logged at info
--- http_config
    aai_jwt_key hs256 aai-test-secret-0123456789abcdef0123456789abcdef0123456789abcdef;
--- config
    location /t {
        return 200 "$aai_jwt_status [$aai_user]\n";
    }
--- request
GET /t
--- more_headers eval
'Authorization: Bearer ' . ::jwt(header => { crit => ['b64'] })
--- response_body
MALFORMED []
--- error_log eval
qr/\[info\] .*aai_jwt: token rejected: MALFORMED/



=== TEST 2: a request redirected internally (try_files) is limited once
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone once key=$arg_u rate=2r/m;
--- config
    location /t {
        aai_ratelimit once;
        add_header X-RL $aai_ratelimit_status always;
        try_files /nonexistent-036 @b;
    }
    location @b {
        aai_ratelimit once;
        add_header X-RL $aai_ratelimit_status always;
        empty_gif;
    }
--- aai_before
redis_flushdb();
--- request eval
["GET /t?u=once", "GET /t?u=once", "GET /t?u=once"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["X-RL: PASSED", "X-RL: PASSED", "X-RL: REJECTED"]
