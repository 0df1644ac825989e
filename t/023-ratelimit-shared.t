# ngx_http_aai_ratelimit_module: two nginx instances sharing one Redis
# enforce one limit between them; the local fallback is per instance;
# "nginx -s reload" (SIGHUP) keeps the limiter, its state and its metrics.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest;
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone sh_sliding key=$arg_u rate=5r/m;
    aai_ratelimit_zone sh_gcra key=$arg_u rate=5r/m burst=4 nodelay
                       algorithm=gcra;
    aai_ratelimit_zone sh_local key=$arg_u rate=3r/m;

    server {
        listen $TEST_NGINX_INSTANCE_PORT;
        add_header X-RL $aai_ratelimit_status always;
        location /s { aai_ratelimit sh_sliding; empty_gif; }
        location /g { aai_ratelimit sh_gcra; empty_gif; }
        location /metrics { aai_metrics; }
    }
_EOC_

redis_flushdb();

my ($pa, $stopa, $prefa) = start_nginx_instance('rl023a', $conf,
                                                 workers => 2);
my ($pb, $stopb) = start_nginx_instance('rl023b', $conf);

sub status_of {
    my ($port, $path) = @_;
    my ($st) = http_get($port, $path, {});
    return $st // 0;
}

# requests alternate between the instances: exactly the limit is admitted

for my $loc ('s', 'g') {
    my @st = map { status_of($_ % 2 ? $pb : $pa, "/$loc?u=alt") } 0 .. 11;
    is(scalar(grep { $_ == 200 } @st), 5,
       "/$loc: exactly 5 of 12 alternating requests admitted");
    is(join(',', @st), join(',', (200) x 5, (429) x 7),
       "/$loc: the first 5 admitted, the rest rejected");
}

# distinct users do not share a limit

is(join(',', map { status_of($_ % 2 ? $pb : $pa, "/s?u=user$_") } 0 .. 5),
   '200,200,200,200,200,200', 'other users are not limited by "alt"');


# --- reload: same state, new zone, metrics kept -----------------------------

sub count_lines {
    my ($prefix, $re) = @_;
    return scalar grep { /$re/ } file_lines("$prefix/logs/error.log");
}

# HUP, then wait until the old workers (2) exited: they must not hang
sub hup {
    my $prefix = shift;
    my ($pid) = file_lines("$prefix/logs/nginx.pid");
    chomp $pid;
    my $exited = count_lines($prefix, qr/worker process \d+ exited/);
    kill 'HUP', $pid or die "HUP $pid: $!";
    my $deadline = time + 5;
    my $now = $exited;
    while (time < $deadline) {
        $now = count_lines($prefix, qr/worker process \d+ exited/);
        last if $now >= $exited + 2;
        sleep 0.05;
    }
    is($now - $exited, 2, 'reload: the old workers exited');
}

{
    # a new zone in the configuration, the rest unchanged

    my $file = "$prefa/conf/nginx.conf";
    open my $in, '<', $file or die "$file: $!";
    my $text = do { local $/; <$in> };
    close $in;
    $text =~ s{(location /metrics)}{location /n { aai_ratelimit sh_new; empty_gif; }\n        $1};
    $text =~ s{(aai_ratelimit_zone sh_local)}{aai_ratelimit_zone sh_new key=\$arg_u rate=1r/m;\n    $1};
    open my $out, '>', $file or die "$file: $!";
    print $out $text;
    close $out;

    hup($prefa);

    is(status_of($pa, '/s?u=alt'), 429, 'after reload: Redis state kept');
    is(status_of($pa, '/s?u=fresh'), 200, 'after reload: a new key passes');
    is(status_of($pa, '/n?u=x') . ',' . status_of($pa, '/n?u=x'), '200,429',
       'after reload: the new zone limits');

    hup($prefa);

    is(status_of($pa, '/s?u=fresh2'), 200, 'second reload: still working');

    my ($st, undef, $m) = http_get($pa, '/metrics', {});
    like($m, qr/aai_ratelimit_requests_total\{zone="sh_new",outcome="passed"\} 1\n/,
         'after reload: metrics of the new zone');

    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
              file_lines("$prefa/logs/error.log");
    is(scalar @bad, 0, 'reloads: no alert, no crash') or diag(@bad);
}

$stopa->();
$stopb->();


# --- the local fallback is per instance -------------------------------------

{
    my $dead = free_port();
    (my $lconf = $conf) =~ s/127\.0\.0\.1:\$TEST_NGINX_REDIS_PORT/127.0.0.1:$dead/;
    $lconf =~ s{(location /metrics)}{location /l { aai_ratelimit sh_local; aai_ratelimit_fallback local; empty_gif; }\n        $1};

    my ($la, $lstopa) = start_nginx_instance('rl023la', $lconf);
    my ($lb, $lstopb) = start_nginx_instance('rl023lb', $lconf);

    my @st = map { status_of($_ % 2 ? $lb : $la, "/l?u=loc") } 0 .. 9;
    is(scalar(grep { $_ == 200 } @st), 6,
       'fallback local: each instance admits the full limit (2 x 3)');

    $lstopa->();
    $lstopb->();
}

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the same limit on the runner's own nginx
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone blk key=$arg_u rate=1r/m;
--- config
    location /t {
        aai_ratelimit blk;
        empty_gif;
    }
--- request eval
["GET /t?u=blk", "GET /t?u=blk"]
--- error_code eval
[200, 429]
--- aai_before
redis_flushdb();
