# The Redis client over TLS (tls=on, tls_ca=, tls_cert=/tls_key=,
# tls_name=, tls_verify=): a real redis-server with a TLS port and AUTH,
# certificates made here with openssl.  Both modules work over TLS; a
# server certificate from another CA, an expired one and one for another
# name are refused and logged (the limiter falls back as configured); a
# Redis that requires client certificates gets one; nginx -t refuses a
# missing file and tls_cert without tls_key.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use File::Temp qw( tempdir );
use POSIX qw( :sys_wait_h SIGTERM SIGKILL );

my $PW = 'tls-secret-012';
my $D = tempdir('aai012-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub ca { tls_ca($D, @_) }
sub cert { tls_cert($D, @_) }

ca('ca');
ca('ca2');
my $SAN = 'subjectAltName=DNS:localhost,IP:127.0.0.1';
cert('server', 'ca', 2, $SAN);
cert('expired', 'ca', -1, $SAN);
cert('other', 'ca2', 2, $SAN);
cert('client', 'ca', 2, 'extendedKeyUsage=clientAuth');

my %Redis;

# a redis-server with a TLS port for nginx and a plain port for the test
sub tls_redis {
    my ($cert, %o) = @_;
    my ($plain, $tls) = (free_port(), free_port());
    my $dir = "$D/redis-$tls";
    mkdir $dir;
    my $pid = spawn(['redis-server', '--port', $plain, '--bind', '127.0.0.1',
                     '--tls-port', $tls, '--tls-cert-file', "$D/$cert.crt",
                     '--tls-key-file', "$D/$cert.key",
                     '--tls-ca-cert-file', "$D/ca.crt",
                     '--tls-auth-clients', $o{auth_clients} ? 'yes' : 'no',
                     '--requirepass', $PW, '--save', '', '--appendonly',
                     'no', '--dir', $dir, '--daemonize', 'no',
                     '--logfile', ''], log => "$dir/redis.log");
    $Redis{$tls} = $pid;
    my $up = wait_until(5, sub {
        local $AaiTest::RedisErrorsDie = 0;
        my $r = eval { redis_cmd_port($plain, 'AUTH', $PW) };
        die "redis-server exited\n" if waitpid($pid, WNOHANG) == $pid;
        defined $r && $r eq 'OK';
    });
    die "redis-server on $plain/$tls did not answer\n" unless $up;
    return ($plain, $tls);
}

sub stop_tls_redis {
    my $tls = shift;
    stop_pid(delete $Redis{$tls});
}

sub front {
    my ($name, $tls, $params, %o) = @_;
    my $app = free_port();
    my $redis = "127.0.0.1:$tls password=$PW tls=on $params "
                . "connect_timeout=2s timeout=500ms";
    my $fallback = $o{fallback} // 'allow';
    return start_nginx_instance($name, <<_EOC_);
    aai_ratelimit_redis $redis;
    aai_cache_redis $redis;
    aai_ratelimit_zone z key=\$arg_u rate=3r/m;
    aai_ratelimit_fallback $fallback;

    server {
        listen 127.0.0.1:$app;
        location / {
            add_header Cache-Control "max-age=60";
            return 200 "app \$uri\\n";
        }
    }

    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL \$aai_ratelimit_status always;
        add_header X-Cache \$aai_cache_status always;

        location /rl/ {
            aai_ratelimit z;
            proxy_pass http://127.0.0.1:$app;
        }
        location /cache/ {
            aai_cache on;
            proxy_pass http://127.0.0.1:$app;
        }
    }
_EOC_
}

sub get {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0) . ' ' . ($h->{'x-rl'} // $h->{'x-cache'} // '');
}

sub limit_ok {
    my ($port, $user, $what) = @_;
    my @r = map { get($port, "/rl/?u=$user") } 1 .. 4;
    is(join(',', @r), '200 PASSED,200 PASSED,200 PASSED,429 REJECTED',
       "$what: the limit is enforced through Redis");
}

sub cache_hit_ok {
    my ($port, $path, $what) = @_;
    my ($first, $hit) = (get($port, $path), '');
    wait_until(5, sub { ($hit = get($port, $path)) eq '200 HIT' });
    is($first, '200 MISS', "$what: first lookup misses");
    is($hit, '200 HIT', "$what: then hits, from Redis over TLS");
}

sub refused_ok {
    my ($name, $cert, $params, $re, $what) = @_;
    my ($plain, $tls) = tls_redis($cert);
    my ($port, $stop, $prefix) = front($name, $tls, $params,
                                       fallback => 'deny');
    my $r = get($port, '/rl/?u=refused');
    is($r, '429 ERROR', "$what: the limiter falls back (deny)");
    log_like("$prefix/logs/error.log",
             qr/\[error\].*aai redis 127\.0\.0\.1:$tls: $re/, "$what: logged");
    is(redis_cmd_port($plain, 'DBSIZE'), 0, "$what: nothing written");
    no_log_problems("$prefix/logs/error.log",
                    "$what: no alert, no crash");
    $stop->();
    stop_tls_redis($tls);
}


# --- TLS with AUTH, both modules -------------------------------------------

{
    my ($plain, $tls) = tls_redis('server');
    my ($port, $stop, $prefix) = front('r012ok', $tls,
                                       "tls_ca=$D/ca.crt tls_name=localhost");

    limit_ok($port, 'alice', 'tls');
    my $keys = redis_cmd_port($plain, 'KEYS', '*');
    ok(scalar(grep { /alice/ || /^aai:rl:/ } @$keys),
       'tls: the limiter\'s key is in Redis') or diag("@$keys");
    cache_hit_ok($port, '/cache/a', 'tls');

    # both modules' connections dropped: they reconnect, reusing the session

    redis_cmd_port($plain, 'CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME',
                   'yes');
    limit_ok($port, 'bob', 'tls, after a reconnect');
    my @reused = grep { /TLS handshake done, session reused: 1/ }
                 file_lines("$prefix/logs/error.log");
    my @debug = grep { /\[debug\]/ } file_lines("$prefix/logs/error.log");
    SKIP: {
        skip 'nginx without debug logging', 1 unless @debug;
        ok(scalar @reused, 'tls: the session is reused on reconnect');
    }

    my @err = grep { /\[error\].*aai redis/ }
              file_lines("$prefix/logs/error.log");
    is(scalar @err, 0, 'tls: no Redis error logged') or diag(@err);
    no_log_problems("$prefix/logs/error.log",
                    'tls: no alert, no crash');
    $stop->();
    stop_tls_redis($tls);
}


# --- refused: another CA, expired, another name ----------------------------

refused_ok('r012ca', 'other', "tls_ca=$D/ca.crt tls_name=localhost",
           qr/TLS: server certificate verify failed: \(\d+: unable to (?:verify the first certificate|get local issuer certificate)\)/,
           'another CA');

refused_ok('r012exp', 'expired', "tls_ca=$D/ca.crt tls_name=localhost",
           qr/TLS: server certificate verify failed: .*certificate has expired/,
           'expired certificate');

refused_ok('r012name', 'server', "tls_ca=$D/ca.crt tls_name=wrong.example",
           qr/TLS: server certificate does not match tls_name "wrong\.example"/,
           'wrong name');

# tls_verify=off takes the certificate from another CA
{
    my ($plain, $tls) = tls_redis('other');
    my ($port, $stop, $prefix) = front('r012nv', $tls, 'tls_verify=off');
    limit_ok($port, 'carol', 'tls_verify=off');
    no_log_problems("$prefix/logs/error.log",
                    'tls_verify=off: no alert, no crash');
    $stop->();
    stop_tls_redis($tls);
}


# --- Redis requires client certificates ------------------------------------

{
    my ($plain, $tls) = tls_redis('server', auth_clients => 1);

    # no tls_name: the address, 127.0.0.1, is checked against the IP SAN
    my ($port, $stop, $prefix) = front('r012cc', $tls,
        "tls_ca=$D/ca.crt tls_cert=$D/client.crt tls_key=$D/client.key");
    limit_ok($port, 'dave', 'client certificate');
    cache_hit_ok($port, '/cache/c', 'client certificate');
    no_log_problems("$prefix/logs/error.log",
                    'client certificate: no alert, no crash');
    $stop->();

    # without one, Redis refuses the connection
    ($port, $stop, $prefix) = front('r012nocc', $tls, "tls_ca=$D/ca.crt",
                                    fallback => 'deny');
    is(get($port, '/rl/?u=erin'), '429 ERROR',
       'no client certificate: the limiter falls back');
    log_like("$prefix/logs/error.log",
             qr/\[error\].*aai redis 127\.0\.0\.1:$tls: /,
             'no client certificate: logged');
    no_log_problems("$prefix/logs/error.log",
                    'no client certificate: no alert, no crash');
    $stop->();
    stop_tls_redis($tls);
}


# --- nginx -t --------------------------------------------------------------

my $rl = 'aai_ratelimit_redis 127.0.0.1:6379';

conf_error_like("$rl tls=on tls_ca=$D/missing.crt;",
    qr/cannot read tls_ca file ".*missing\.crt" in "aai_ratelimit_redis"/,
    'nginx -t: a missing tls_ca file');
conf_error_like("$rl tls=on tls_cert=$D/client.crt;",
    qr/"tls_cert" needs "tls_key" in "aai_ratelimit_redis"/,
    'nginx -t: tls_cert without tls_key');
conf_error_like("$rl tls=on tls_cert=$D/nothere.crt tls_key=$D/client.key;",
    qr/cannot read tls_cert file ".*nothere\.crt"/,
    'nginx -t: a missing tls_cert file');
conf_error_like("$rl tls_ca=$D/ca.crt;",
    qr/TLS parameters need "tls=on" in "aai_ratelimit_redis"/,
    'nginx -t: tls_ca without tls=on');
conf_error_like("$rl tls=maybe;",
    qr/invalid value "maybe" of "tls" in "aai_ratelimit_redis"/,
    'nginx -t: tls=maybe');

conf_error_like("aai_cache_redis 127.0.0.1:6379 tls=on tls_key=$D/client.key;",
    qr/"tls_key" needs "tls_cert" in "aai_cache_redis"/,
    'nginx -t: tls_key without tls_cert (aai_cache_redis)');

logs_once_more();

done_testing();
