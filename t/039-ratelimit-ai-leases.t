# ngx_http_aai_ratelimit_module, limits for an AI product (issue 14, the
# rest): the releases of concurrency= leases ride the worker's batches (no
# command of their own per request), and are counted when lost; an admin
# DELETE admits the key again at once on every worker of the instance; the
# local fallback applies count= and cost= while Redis is stopped.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use IO::Socket::INET;
use IO::Select;
use JSON::PP;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# the upstream is this test: it accepts nginx's connections and answers
# them when the test says so
my $gate = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Proto => 'tcp', Listen => 128,
                                 ReuseAddr => 1)
    or die "gate: $!\n";
my $gport = $gate->sockport;

# accepts n connections from nginx and reads each request
sub gate_accept {
    my $n = shift;
    my @c;
    my $sel = IO::Select->new($gate);
    my $deadline = time + 10;
    while (@c < $n && time < $deadline) {
        next unless $sel->can_read(0.2);
        my $c = $gate->accept or next;
        my $req = '';
        my $cs = IO::Select->new($c);
        while ($req !~ /\r\n\r\n/ && time < $deadline) {
            next unless $cs->can_read(0.2);
            sysread($c, $req, 4096, length $req) or last;
        }
        push @c, $c;
    }
    return @c;
}

sub gate_answer {
    for my $c (@_) {
        syswrite($c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                     . "Connection: close\r\n\r\nok\n");
        close $c;
    }
}

# a client connection kept alive: its request written now, its response
# read later
sub client_open {
    my $port = shift;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "client: $!\n";
    return $s;
}

sub client_send {
    my ($s, $path, $close) = @_;
    syswrite($s, "GET $path HTTP/1.1\r\nHost: localhost\r\n"
                 . ($close ? "Connection: close\r\n" : '') . "\r\n");
}

# the status of one response (with its Content-Length body) on s
sub client_status {
    my $s = shift;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;
    while (time < $deadline) {
        if ($buf =~ /\r\n\r\n/) {
            my ($len) = $buf =~ /Content-Length: (\d+)/i;
            my $head = index($buf, "\r\n\r\n") + 4;
            last if defined $len && length($buf) >= $head + $len;
        }
        next unless $sel->can_read(0.2);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf =~ m{^HTTP/1\.1 (\d+)} ? $1 : 0;
}

# the layout of a limiter FCALL: its checks and its releases
sub layout_of {
    my $args = shift;
    my $layout = $args->[3 + $args->[2]];
    my ($checks, $releases, $i) = (0, 0, 0);
    while ($i < length $layout) {
        my ($z, $def) = map { ord } split //, substr($layout, $i, 2);
        if ($z == 0 && $def == 0) {
            $releases++;
            $i += 5 + ord substr($layout, $i + 4, 1);
        } elsif ($z == 0) {
            $i += 4;
        } else {
            $checks += $z;
            $i += 1 + 3 * $z;
        }
    }
    return ($checks, $releases);
}

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:REDIS_PORT timeout=2s connect_timeout=100ms;

    map $arg_plan $plan_count { pro 5; default ""; }

    aai_ratelimit_zone lz    key=$arg_u concurrency=100;
    aai_ratelimit_zone plain key=$arg_u rate=100r/m;
    aai_ratelimit_zone adm   key=$arg_u rate=2r/m;
    aai_ratelimit_zone chat  key=$arg_u rate=2r/m count=$plan_count;
    aai_ratelimit_zone units key=$arg_u rate=10r/m;
    aai_ratelimit_zone unitsg key=$arg_u rate=10r/m burst=9 nodelay
                              algorithm=gcra;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT LISTEN_OPTS;
        add_header X-Pid $pid always;

        location /hold  { aai_ratelimit lz; proxy_pass http://127.0.0.1:GATE; }
        location /plain { aai_ratelimit plain; empty_gif; }
        location /a     { aai_ratelimit adm; empty_gif; }
        location /peek  { aai_ratelimit adm cost=0; empty_gif; }
        location /chat  { aai_ratelimit chat; empty_gif; }
        location /cost  { aai_ratelimit units cost=$arg_cost; empty_gif; }
        location /costg { aai_ratelimit unitsg cost=$arg_cost; empty_gif; }
        location = /admin { aai_ratelimit_admin; }
        location /metrics { aai_metrics; }
    }
_EOC_

$conf =~ s/GATE/$gport/g;

sub conf_for {
    my ($redis, $listen) = @_;
    (my $c = $conf) =~ s/REDIS_PORT/$redis/;
    $c =~ s/LISTEN_OPTS/$listen \/\/ ''/e;
    return $c;
}

# the status of a request; get_h: and its headers
sub get_h {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0, $h);
}

sub get { return (get_h(@_))[0] }

sub zcards {
    my $n = 0;
    $n += redis_cmd('ZCARD', "aai:rl:lz:r$_") for 0 .. 3;
    return $n;
}


# --- releases ride the batches -----------------------------------------------

redis_flushdb();

{
    my ($port, $stop, $prefix) = start_nginx_instance('rl039r',
                                    conf_for($ENV{TEST_NGINX_REDIS_PORT}),
                                    events => 'multi_accept on;');
    my @w;
    ok(wait_until(5, sub { @w = worker_pids(master_pid($prefix)); @w == 1 }),
       'one worker');

    is(get($port, '/plain?u=warm'), 200, 'the script is loaded');

    # 20 requests in flight on 4 keys, each holding a lease
    my @held = map { client_open($port) } 0 .. 19;
    client_send($held[$_], '/hold?u=r' . ($_ % 4), 1) for 0 .. 19;
    my @up = gate_accept(20);
    is(scalar @up, 20, 'twenty requests at the upstream');
    ok(wait_until(5, sub { zcards() == 20 }), 'twenty leases taken');

    # five idle keepalive connections, for requests in the same iteration
    my @idle = map { client_open($port) } 0 .. 4;
    for (@idle) { client_send($_, '/plain?u=k'); }
    is(join(',', map { client_status($_) } @idle), '200,200,200,200,200',
       'five keepalive connections');

    # worker stopped: the 20 responses arrive, 5 requests too; it reads them
    # all in one event loop iteration
    my (@st, @ids);
    my @c = grep { $_->{client} ne 'lua' } redis_monitor(sub {
        kill 'STOP', @w;
        eval {
            client_send($_, '/plain?u=k') for @idle;
            gate_answer(@up);
        };
        kill 'CONT', @w;
        @st = map { client_status($_) } @held, @idle;
        wait_until(5, sub { zcards() == 0 });
    });

    is(join(',', @st), join(',', (200) x 25), 'every response 200');
    is(zcards(), 0, 'every lease released: the sorted sets are gone');
    # one FCALL when the worker reads the 25 events in one iteration; the
    # kernel may hand the upstreams' answers to the next one, whose batch
    # then carries the releases: never more than those two, never a ZREM
    my ($checks, $releases) = (0, 0);
    for (@c) {
        my ($k, $r) = layout_of($_->{args});
        $checks += $k;
        $releases += $r;
    }
    ok(@c >= 1 && @c <= 2
       && !grep({ uc $_->{args}[0] ne 'FCALL' } @c),
       'one or two FCALLs for the 20 releases and the 5 checks')
        or diag(join "\n", map { join ' ', @{ $_->{args} }[0, 2] } @c);
    is("$checks,$releases", '5,20',
       '... holding the 5 checks and the 20 releases');
    is(scalar(grep { uc $_->{args}[0] eq 'ZREM' } @c), 0,
       'no ZREM of their own');

    # under concurrent load: no command per release
    my @r;
    @c = grep { $_->{client} ne 'lua' } redis_monitor(sub {
        for my $round (1 .. 3) {
            my @h = map { client_open($port) } 0 .. 9;
            client_send($h[$_], '/hold?u=r' . ($_ % 4), 1) for 0 .. 9;
            my @u = gate_accept(10);
            gate_answer(@u);
            push @r, map { client_status($_) } @h;
        }
        wait_until(5, sub { zcards() == 0 });
    });
    is(join(',', @r), join(',', (200) x 30), 'thirty requests, 200');
    is(zcards(), 0, 'the sorted sets are empty afterwards');
    my %n;
    $n{ uc $_->{args}[0] }++ for @c;
    is(join(',', sort keys %n), 'FCALL', 'only FCALL: no ZREM, no EVAL');
    my $rel = 0;
    $rel += (layout_of($_->{args}))[1] for @c;
    is($rel, 30, 'each lease released once, inside a batch');
    ok($n{FCALL} < 60, "fewer commands than checks and releases: "
                       . "$n{FCALL} for 60");

    my $m = metrics_get($port, '/metrics');
    is($m->{'aai_ratelimit_leases_released_total{zone="lz"}'} . ','
       . $m->{'aai_ratelimit_releases_dropped_total{zone="lz"}'}, '50,0',
       'the releases counted, none lost');

    $stop->();
}


# --- a release lost to Redis down is tried, then counted ---------------------

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rl039d',
                                                      conf_for($rport));
    my $s = client_open($port);
    client_send($s, '/hold?u=d1', 1);
    my @up = gate_accept(1);
    ok(wait_until(5, sub { redis_cmd_port($rport, 'ZCARD', 'aai:rl:lz:d1')
                           == 1 }), 'a lease taken');
    stop_redis($rport);
    gate_answer(@up);
    is(client_status($s), 200, 'the request ends, Redis stopped');

    my $m = metrics_wait($port, '/metrics', sub {
        ($_[0]->{'aai_ratelimit_releases_dropped_total{zone="lz"}'} // 0)
            >= 1 }, 10);
    is($m->{'aai_ratelimit_releases_dropped_total{zone="lz"}'} . ','
       . $m->{'aai_ratelimit_leases_released_total{zone="lz"}'}, '1,0',
       'the release is counted lost after its tries');
    ok(scalar(grep { /release of a lease lost: .*expires by itself/ }
              file_lines("$prefix/logs/error.log")), '... and logged');
    $stop->();
}


# --- admin DELETE: every worker admits the key again at once -----------------

{
    my ($port, $stop, $prefix) = start_nginx_instance('rl039a',
                                    conf_for($ENV{TEST_NGINX_REDIS_PORT},
                                             'reuseport'),
                                    workers => 2);

    is(join(',', map { get($port, '/a?u=amy') } 1 .. 3), '200,200,429',
       'the key is over its limit');

    # the blocklist (shared memory) rejects it in every worker, no Redis
    my %pids;
    for (1 .. 100) {
        my ($st, $h) = get_h($port, '/peek?u=amy');
        $pids{ $h->{'x-pid'} // '' } = $st;
        last if keys %pids == 2;
    }
    is(join(',', values %pids), '429,429', 'both workers reject it');
    my $m = metrics_get($port, '/metrics');
    ok($m->{'aai_ratelimit_local_rejects_total{zone="adm"}'} >= 2,
       '... from the blocklist');

    my ($st, $h, $body) = http_get($port, '/admin?zone=adm&key=amy', {},
                                   'DELETE');
    is($st . ' ' . (eval { decode_json($body)->{deleted} } // $body), '200 1',
       'admin DELETE');

    %pids = ();
    my @st;
    for (1 .. 100) {
        my ($st, $h) = get_h($port, '/peek?u=amy');
        push @st, $st;
        $pids{ $h->{'x-pid'} // '' } = 1;
        last if keys %pids == 2;
    }
    is(scalar(keys %pids), 2, 'both workers asked');
    is(join(',', grep { $_ != 200 } @st), '',
       'every one admits the key at once') or diag(join ',', @st);
    is(join(',', map { get($port, '/a?u=amy') } 1 .. 3), '200,200,429',
       'the whole count is back');

    $stop->();
}


# --- admin DELETE after a rejection still in Redis: not blocklisted again -----

# A request over the limit is in Redis when the DELETE comes (Redis paused:
# its check then the DEL, on one connection): its rejection arrives first
# and blocklists the key, the DEL's reply then clears it (and the reset's
# stamp would ignore a rejection asked before it and come later).  Cleared
# only when the DELETE was sent, the key stayed in the blocklist until the
# retry-after.

sub log_count {
    my ($file, $re) = @_;
    return scalar grep { /$re/ } file_lines($file);
}

{
    my $rport = start_redis();
    my $rpid = (redis_cmd_port($rport, 'INFO', 'server')
                =~ /process_id:(\d+)/)[0];
    my ($port, $stop, $prefix) = start_nginx_instance('rl039s',
                                                      conf_for($rport));
    my $log = "$prefix/logs/error.log";

    is(join(',', map { get($port, '/a?u=bo') } 1 .. 2), '200,200',
       'the key at its limit');

    my ($over, $del);
    stop_continue([$rpid], sub {
        my $sent = log_count($log, qr/aai_ratelimit batch \S+ sent/);
        $over = client_open($port);
        client_send($over, '/a?u=bo', 1);
        wait_until(5, sub {
            log_count($log, qr/aai_ratelimit batch \S+ sent/) > $sent });
        $del = client_open($port);
        syswrite($del, "DELETE /admin?zone=adm&key=bo HTTP/1.1\r\n"
                       . "Host: localhost\r\nConnection: close\r\n\r\n");
        wait_until(5, sub { log_count($log, qr/: DEL queued/) > 0 });
    });

    is(client_status($over), 429, 'the request checked before the DEL: 429');
    is(client_status($del), 200, 'the DELETE: 200');
    is(get($port, '/peek?u=bo'), 200,
       'the key is admitted at once: its late rejection did not stay');
    is(get($port, '/a?u=bo') . ',' . get($port, '/a?u=bo'), '200,200',
       '... with its whole count');

    $stop->();
    stop_redis($rport);
}


# --- the local fallback applies count= and cost= -----------------------------

{
    my $rport = start_redis();
    my ($port, $stop, $prefix) = start_nginx_instance('rl039l',
                                    conf_for($rport)
                                    . "    aai_ratelimit_fallback local;\n");
    is(get($port, '/chat?u=warm'), 200, 'Redis up');
    stop_redis($rport);

    my @st = map { get($port, '/chat?u=free') } 1 .. 3;
    is(join(',', @st), '200,200,429', 'Redis stopped: the zone\'s count, 2');

    @st = map { get($port, '/chat?u=pro&plan=pro') } 1 .. 6;
    is(join(',', @st), '200,200,200,200,200,429', 'count=: a pro user 5');

    my ($s, $h) = get_h($port, '/chat?u=pro2&plan=pro');
    is("$s $h->{'ratelimit-policy'} $h->{ratelimit}",
       '200 "chat";q=5;w=60 "chat";r=4;t=12', '... with its headers');

    @st = map { get($port, "/cost?u=c1&cost=$_") } 4, 4, 4, 2, 1;
    is(join(',', @st), '200,200,429,200,429',
       'cost=: 4 and 4 of 10, then 4 rejected, 2 admitted, 1 rejected');

    is(get($port, '/cost?u=c2&cost=11'), 429, 'a cost above the count');
    is(get($port, '/cost?u=c2&cost=10'), 200, '... spent nothing');

    @st = map { get($port, "/cost?u=c3&cost=0") } 1 .. 12;
    is(join(',', @st), join(',', (200) x 12), 'cost=0 spends nothing');

    @st = map { get($port, "/costg?u=g1&cost=$_") } 6, 5, 4;
    is(join(',', @st), '200,429,200', 'gcra: 6, then 5 rejected, then 4');

    ok(scalar(grep { /fallback "local"/ } file_lines("$prefix/logs/error.log")),
       'decided by the local fallback');
    $stop->();
}

run_tests();

__DATA__

=== TEST 1: the runner's own nginx: a concurrency= zone releases its lease
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone one key=$arg_u concurrency=1;
--- config
    location /t {
        aai_ratelimit one;
        empty_gif;
    }
--- request eval
["GET /t?u=x", "GET /t?u=x", "GET /t?u=x"]
--- error_code eval
[200, 200, 200]
--- aai_before
redis_flushdb();
