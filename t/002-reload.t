# Nothing accumulates across reloads: an nginx with a master process and 2
# workers, configured with every aai module that is loaded (kafka, rate
# limiter with JWT keys from files, cache, the Redis test module, metrics),
# is reloaded (SIGHUP, as "nginx -s reload" sends) 30 times with requests
# in between.  Asserted: it serves every module's location after every
# reload, old workers exit, the master's open files do not grow, its RSS
# grows by less than 2 MB from the 5th to the 30th reload, every event
# reached Kafka, and the log has no [alert], [emerg] or crashed worker.
#
# Under AddressSanitizer (AAI_ASAN, `make asan`) the RSS bound is not
# checked: the runtime keeps freed memory in its quarantine (up to 256 MB),
# so RSS grows with every reload whatever the modules do.  There the
# LeakSanitizer check at every process exit (t/run-tests) takes its place:
# the master exits after the 30 reloads, and memory a module lost at each
# configuration load is reported with the allocation stack.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT wait_until );
use Cwd ();
use File::Spec ();
use Time::HiRes qw( time sleep );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $Reloads = 30;
my $Base    = 5;                  # RSS and fds are compared to this reload
my $RssBound = 2 * 1024;          # kB
my $Settle  = $ENV{AAI_ASAN} ? 30 : 15;   # s for a reload to complete

my %loaded = map { m{ngx_http_aai_(\w+?)_module\.so$} ? ($1 => 1) : () }
             split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');

# every module the build makes is loaded (t/001 says the same), so that
# no part of the configuration below is left out unnoticed
my @expect = split ' ', ($ENV{AAI_EXPECT_MODULES}
                         // 'ratelimit cache kafka redistest');
is(join(' ', grep { !$loaded{$_} } @expect), '',
   'every expected module is loaded');

my $jwt = File::Spec->rel2abs('t/jwt');
my $tag = "$$-" . int(time);
my $topic = "aai-reload-$tag";
my $app_port = free_port();

# what each loaded module gets: http-level directives, locations, and the
# requests that must succeed after every reload ([path, status, body re])

my ($http, $locs, @checks) = ('', '');

if ($loaded{kafka} && $ENV{TEST_NGINX_KAFKA_BROKERS}) {
    $http .= "    aai_kafka_brokers $ENV{TEST_NGINX_KAFKA_BROKERS};\n";
    $locs .= <<"_EOC_";
        location /kafka {
            aai_kafka_event $topic key=\$arg_n;
            return 200 "kafka \$arg_n\\n";
        }
_EOC_
    push @checks, ['kafka', '/kafka?n=%d', 200, qr/^kafka \d+$/];
}

if ($loaded{ratelimit}) {
    $http .= <<"_EOC_";
    aai_ratelimit_redis 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT};
    aai_ratelimit_zone reload002 key=\$arg_n rate=100000r/m;
    aai_jwt_key rs256 file=$jwt/rsa.pub kid=r1;
    aai_jwt_key es256 file=$jwt/ec256.pub kid=e1;
    aai_jwt_key hs384 file=$jwt/hs.secret;
    aai_jwt_token \$http_authorization;
_EOC_
    $locs .= <<'_EOC_';
        location /ratelimit {
            aai_ratelimit reload002;
            add_header X-RL $aai_ratelimit_status always;
            empty_gif;
        }
_EOC_
    push @checks, ['ratelimit', '/ratelimit?n=%d', 200, qr/^GIF/];
}

if ($loaded{cache}) {
    $http .= "    aai_cache_redis 127.0.0.1:$ENV{TEST_NGINX_REDIS_PORT};\n";
    $locs .= <<"_EOC_";
        location /cache/ {
            aai_cache on;
            proxy_pass http://127.0.0.1:$app_port/app/;
        }
_EOC_
    push @checks, ['cache', "/cache/$tag-%d", 200, qr{^app /app/$tag-\d+$}];
}

# the test module answers 503 while its connection is not up: a new
# worker's handshake on a loaded machine may take longer than the default
# 200 ms, which is not what this file is about
if ($loaded{redistest}) {
    $http .= "    aai_redis_test_server 127.0.0.1:"
             . "$ENV{TEST_NGINX_REDIS_PORT} connect_timeout=2s timeout=2s;\n";
    $locs .= "        location /redis { aai_redis_test; }\n";
    push @checks, ['redistest', '/redis?cmd=PING', 200, qr/PONG/];
}

if ($loaded{kafka} || $loaded{ratelimit} || $loaded{cache}) {
    $locs .= "        location = /metrics { aai_metrics; }\n";
    push @checks, ['metrics', '/metrics', 200, qr/^# (HELP|TYPE) aai_/m];
}

our $HttpConfig = <<"_EOC_";
$http
    server {
        listen 127.0.0.1:$app_port;
        location /app/ {
            return 200 "app \$uri\\n";
        }
    }
_EOC_

our $Locations = <<"_EOC_";
$locs
        location = /probe {
            return 200 "up\\n";
        }
_EOC_
push @checks, ['nginx', '/probe', 200, qr/^up$/];

diag('reloading with: ' . join(' ', map { $_->[0] } @checks));


# /proc helpers

sub proc_file {
    my $path = shift;
    open my $in, '<', $path or return undef;
    local $/;
    my $s = <$in>;
    close $in;
    return $s;
}

sub rss_kb {
    my $s = proc_file("/proc/$_[0]/status") // '';
    return $s =~ /^VmRSS:\s+(\d+)\s+kB/m ? $1 : undef;
}

sub fds {
    my $pid = shift;
    opendir my $d, "/proc/$pid/fd" or return ();
    my %fd;
    for my $f (grep { /^\d+$/ } readdir $d) {
        $fd{$f} = readlink("/proc/$pid/fd/$f") // '?';
    }
    closedir $d;
    return %fd;
}

# the master's children: pid => 1 for a worker, 0 for one shutting down or
# exited and not yet reaped by the master
sub worker_pids {
    my $master = shift;
    my %w;
    opendir my $d, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $d) {
        my $st = proc_file("/proc/$p/stat") // next;
        next unless $st =~ /^\d+ \(.*\) (\S) (\d+) / && $2 == $master;
        if ($1 eq 'Z') {
            $w{$p} = 0;
            next;
        }
        my $cmd = proc_file("/proc/$p/cmdline") // '';
        $cmd =~ s/\0+$//;
        next unless $cmd =~ /^nginx: worker process/;
        $w{$p} = $cmd =~ /shutting down/ ? 0 : 1;
    }
    closedir $d;
    return %w;
}

# the master's descriptors once it is done with the exited workers (it
# closes their channels right after reaping them): the same set twice in a
# row, 100 ms apart
sub settled_fds {
    my $master = shift;
    my %prev = fds($master);
    my $deadline = time + 5;
    while (time < $deadline) {
        sleep 0.1;
        my %now = fds($master);
        return %now if join(',', map { "$_=$now{$_}" } sort keys %now)
                       eq join(',', map { "$_=$prev{$_}" } sort keys %prev);
        %prev = %now;
    }
    return %prev;
}

# every check once; returns the failures as text
my $n = 0;
sub serve_all {
    my ($port, $when) = @_;
    my @bad;
    for my $c (@checks) {
        my ($name, $path, $status, $re) = @$c;
        my $p = $path =~ /%d/ ? sprintf($path, ++$n) : $path;
        my ($st, undef, $body) = http_get($port, $p, {});
        $body //= '';
        push @bad, "$when: $name $p: " . ($st // 'no response')
                   . " \"" . substr($body, 0, 80) . "\""
            unless defined $st && $st == $status && $body =~ $re;
    }
    return @bad;
}


# the reloads

my ($port, $stop, $prefix) = start_nginx_instance('reload002', <<"_EOC_",
$HttpConfig
    server {
        listen 127.0.0.1:\$TEST_NGINX_INSTANCE_PORT;
$Locations
    }
_EOC_
    workers => 2);

my $log = "$prefix/logs/error.log";
my ($master) = (proc_file("$prefix/logs/nginx.pid") // '') =~ /(\d+)/;
ok($master, 'master pid');

# under AAI_ASAN the runtime (and the shim t/run-tests adds) is in the
# master and in every worker: each preloaded file is mapped in each

sub unmapped {
    my @pids = @_;
    my @miss;
    for my $lib (split ' ', $ENV{AAI_ASAN} // '') {
        my $real = Cwd::realpath($lib) // $lib;
        for my $p (@pids) {
            my $maps = proc_file("/proc/$p/maps") // '';
            push @miss, "$real not in $p" if index($maps, $real) < 0;
        }
    }
    return @miss;
}

my @bad = serve_all($port, 'before the reloads');
my @unmapped;
my $kafka_sent = grep { $_->[0] eq 'kafka' } @checks;
my (%rss, %nfd, %fdset, @stuck);

for my $i (1 .. $Reloads) {
    my %old = worker_pids($master);
    kill 'HUP', $master or die "kill HUP $master: $!";

    my $done = wait_until($Settle, sub {
        my %w = worker_pids($master);
        my @new = grep { $w{$_} && !exists $old{$_} } keys %w;
        my @left = grep { exists $w{$_} } keys %old;
        return @new == 2 && !@left;
    });
    if (!$done) {
        my %w = worker_pids($master);
        push @stuck, "reload $i: workers now "
                     . join(',', map { "$_=$w{$_}" } sort keys %w)
                     . ", before " . join(',', sort keys %old);
    }

    push @bad, serve_all($port, "after reload $i");
    if ($ENV{AAI_ASAN}) {
        my %w = worker_pids($master);
        push @unmapped, unmapped($master, grep { $w{$_} } keys %w);
    }
    $kafka_sent++ if grep { $_->[0] eq 'kafka' } @checks;

    if ($i == $Base || $i == $Reloads) {
        my %f = settled_fds($master);
        $nfd{$i} = keys %f;
        $fdset{$i} = \%f;
        $rss{$i} = rss_kb($master);
    }
}

is(join("\n", @bad), '', "served every location after each of $Reloads "
                         . "reloads");
is(join("\n", @stuck), '', 'after each reload 2 new workers run and the '
                           . 'old ones have exited');

SKIP: {
    skip 'not under AddressSanitizer', 1 unless $ENV{AAI_ASAN};
    is(join("\n", @unmapped), '', "master and workers have $ENV{AAI_ASAN} "
                                 . "mapped");
}

# (c) open files of the master

ok($nfd{$Reloads} <= $nfd{$Base}, "master fds: $nfd{$Base} after reload "
   . "$Base, $nfd{$Reloads} after reload $Reloads")
    or diag(join "\n", "descriptors new since reload $Base:",
            map { "  $_ -> $fdset{$Reloads}{$_}" }
            grep { !exists $fdset{$Base}{$_} } sort keys %{$fdset{$Reloads}});

# (b) resident memory of the master

my $grew = $rss{$Reloads} - $rss{$Base};
SKIP: {
    skip "RSS under AddressSanitizer (quarantine): master RSS $rss{$Base} -> "
         . "$rss{$Reloads} kB; leaks are checked at exit instead", 1
        if $ENV{AAI_ASAN};
    ok($grew < $RssBound, "master RSS grew by $grew kB from reload $Base "
       . "($rss{$Base} kB) to reload $Reloads ($rss{$Reloads} kB), bound "
       . "$RssBound kB");
}

# every event of the kafka location arrived (old workers flush at exit)

SKIP: {
    skip 'kafka module not loaded', 1 unless $kafka_sent;
    my @m = kafka_consume($topic, $kafka_sent, 15);
    is(scalar @m, $kafka_sent, "all $kafka_sent events of the reloads "
                               . "reached Kafka");
}

# (d) the log of the whole life, stop included

$stop->();
ok(wait_until(10, sub { !kill 0, $master }), 'master exited after QUIT');

my @lines = file_lines($log);
my $reconf = grep { /signal 1 \(SIGHUP\) received.*reconfiguring/ } @lines;
is($reconf, $Reloads, "the master logged $Reloads reconfigurations");
my @crit = grep { /\[(alert|emerg)\]|exited on signal|exited with code [1-9]/ }
           @lines;
is(join('', @crit), '', 'no [alert], [emerg] or crashed worker in the log');

no_shuffle();
run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: the reload configuration also serves in the runner's nginx
--- http_config eval: $::HttpConfig
--- config eval: $::Locations
--- request
GET /probe
--- response_body
up
--- no_error_log
[alert]
[emerg]
