# ngx_http_aai_ratelimit_module, limits for an AI product: per-plan counts
# (count= on a zone), costs known up front (cost=), usage charged from the
# response (charge=) across two instances sharing one Redis.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( time sleep );
use IO::Socket::INET;
use POSIX ();
use JSON::PP;

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $up = free_port();

my $conf = <<'_EOC_';
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;

    map $arg_plan $chat_count { pro 5; team 7; default ""; }

    aai_ratelimit_zone chat   key=$arg_u rate=2r/m count=$chat_count;
    aai_ratelimit_zone chatg  key=$arg_u rate=2r/m burst=4 algorithm=gcra
                              count=$chat_count;
    aai_ratelimit_zone chatc  key=$arg_u rate=2r/m algorithm=counter
                              count=$chat_count;
    aai_ratelimit_zone units  key=$arg_u rate=10r/m;
    aai_ratelimit_zone unitsc key=$arg_u rate=10r/m algorithm=counter;
    aai_ratelimit_zone unitsg key=$arg_u rate=10r/m burst=9 nodelay
                              algorithm=gcra;
    aai_ratelimit_zone tokens key=$arg_u rate=1000r/m;
    aai_ratelimit_zone tokc   key=$arg_u rate=1000r/h algorithm=counter;
    aai_ratelimit_zone streams key=$arg_u concurrency=2;
    aai_ratelimit_zone enf    key=$arg_u rate=5r/m;
    aai_ratelimit_zone shadow key=$arg_u rate=2r/m;
    aai_ratelimit_zone sz     key=$arg_u rate=2r/m;
    aai_ratelimit_zone near   key=$arg_u rate=10r/m;
    aai_ratelimit_zone ipz    key=$binary_remote_addr rate=3r/m;
    aai_ratelimit_zone short   key=$arg_u concurrency=1 lease=1s;

    upstream llm { server 127.0.0.1:UPSTREAM_PORT; }

    server {
        listen 127.0.0.1:UPSTREAM_PORT;
        location / {
            add_header X-LLM-Tokens $arg_t;
            return 200 "answer\n";
        }
        location /slow {
            limit_rate $arg_rate;
            return 200 "PAYLOAD";
        }
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        add_header X-RL $aai_ratelimit_status always;

        location /chat   { aai_ratelimit chat;  empty_gif; }
        location /chatg  { aai_ratelimit chatg; empty_gif; }
        location /chatc  { aai_ratelimit chatc; empty_gif; }
        location /cost   { aai_ratelimit units cost=$arg_cost; empty_gif; }
        location /costc  { aai_ratelimit unitsc cost=$arg_cost; empty_gif; }
        location /costg  { aai_ratelimit unitsg cost=$arg_cost; empty_gif; }
        location /llm {
            aai_ratelimit tokens charge=$upstream_http_x_llm_tokens;
            proxy_pass http://llm;
        }
        location /llmc {
            aai_ratelimit tokc charge=$upstream_http_x_llm_tokens;
            proxy_pass http://llm;
        }
        location /both {
            aai_ratelimit chat;
            aai_ratelimit tokens charge=$upstream_http_x_llm_tokens;
            proxy_pass http://llm;
        }
        location /stream {
            aai_ratelimit streams;
            proxy_pass http://llm/slow;
        }
        location /short {
            aai_ratelimit short;
            proxy_pass http://llm/slow;
        }
        location /shadow {
            aai_ratelimit enf;
            aai_ratelimit shadow dry_run;
            empty_gif;
        }
        location /sz  { aai_ratelimit sz; empty_gif; }
        location /szn { aai_ratelimit sz dry_run=nospend; empty_gif; }
        location /near { aai_ratelimit near; empty_gif; }
        location /ip { aai_ratelimit ipz; empty_gif; }
        location = /admin { allow 127.0.0.1; deny all; aai_ratelimit_admin; }
        location /metrics { aai_metrics; }
    }
_EOC_

$conf =~ s/UPSTREAM_PORT/$up/g;
my $payload = 'x' x 200;
$conf =~ s/PAYLOAD/$payload/;

redis_flushdb();

my ($pa, $stopa, $prefa) = start_nginx_instance('rl025a', $conf);
my $upb = free_port();
(my $confb = $conf) =~ s/127\.0\.0\.1:$up\b/127.0.0.1:$upb/g;
my ($pb, $stopb, $prefb) = start_nginx_instance('rl025b', $confb);

sub get {
    my ($port, $path) = @_;
    my ($st, $h) = http_get($port, $path, {});
    return ($st // 0, $h);
}

sub rl_headers {
    my ($port, $path) = @_;
    my ($st, $h) = get($port, $path);
    return join ' ', $st, $h->{'ratelimit-policy'} // '-',
                     $h->{ratelimit} // '-';
}


# --- per-plan counts ---------------------------------------------------------

{
    my @free = map { rl_headers($_ % 2 ? $pb : $pa, '/chat?u=free1') } 0 .. 2;
    is_deeply(\@free, [ '200 "chat";q=2;w=60 "chat";r=1;t=60',
                        '200 "chat";q=2;w=60 "chat";r=0;t=60',
                        '429 "chat";q=2;w=60 "chat";r=0;t=60' ],
              'sliding: a free user gets the zone\'s count, q=2');

    my @pro = map { (get($_ % 2 ? $pb : $pa, '/chat?u=pro1&plan=pro'))[0] }
              0 .. 5;
    is(join(',', @pro), '200,200,200,200,200,429',
       'sliding: a pro user gets the map\'s count (5)');

    my $h = rl_headers($pa, '/chat?u=pro2&plan=pro');
    is($h, '200 "chat";q=5;w=60 "chat";r=4;t=60',
       'sliding: q is the count that applied');

    is(rl_headers($pa, '/chat?u=team1&plan=team'),
       '200 "chat";q=7;w=60 "chat";r=6;t=60', 'sliding: team count 7');

    is(rl_headers($pa, '/chat?u=bad1&plan=nonsense'),
       '200 "chat";q=2;w=60 "chat";r=1;t=60',
       'a plan the map does not know: the zone\'s count');

    # GCRA: the count sets the emission interval (60 s / count)
    is(rl_headers($pa, '/chatg?u=gf'), '200 "chatg";q=2;w=60 "chatg";r=4;t=30',
       'gcra: free user, interval 30 s');
    is(rl_headers($pb, '/chatg?u=gp&plan=pro'),
       '200 "chatg";q=5;w=60 "chatg";r=4;t=12',
       'gcra: pro user, interval 12 s');

    window_margin(60_000_000, 5);    # the counts inside one window (2r/m)
    my @c = map { (get($_ % 2 ? $pb : $pa, '/chatc?u=cf'))[0] } 0 .. 2;
    is(join(',', @c), '200,200,429', 'counter: free user, count 2');
    @c = map { (get($_ % 2 ? $pb : $pa, '/chatc?u=cp&plan=pro'))[0] } 0 .. 5;
    is(join(',', @c), '200,200,200,200,200,429', 'counter: pro user, count 5');
    like(rl_headers($pa, '/chatc?u=cp2&plan=pro'),
         qr/^200 "chatc";q=5;w=60 "chatc";r=4;/, 'counter: q=5');
}


# --- costs known up front ----------------------------------------------------

{
    my @r = map { rl_headers($_->[0], "/cost?u=c1&cost=$_->[1]") }
            [$pa, 4], [$pb, 4], [$pa, 4], [$pb, 2], [$pa, 1];
    is_deeply(\@r, [ '200 "units";q=10;w=60 "units";r=6;t=60',
                     '200 "units";q=10;w=60 "units";r=2;t=60',
                     '429 "units";q=10;w=60 "units";r=0;t=60',
                     '200 "units";q=10;w=60 "units";r=0;t=60',
                     '429 "units";q=10;w=60 "units";r=0;t=60' ],
              'sliding: cost=4,4 admitted, 4 rejected with 2 left, 2 admitted');
    is(redis_cmd('LLEN', 'aai:rl:units:c1'), 10,
       'sliding: 10 units recorded, nothing for the rejected');

    is((get($pa, '/cost?u=c2&cost=11'))[0], 429,
       'a cost above the count is rejected');
    is(redis_cmd('EXISTS', 'aai:rl:units:c2'), 0, '... and spends nothing');

    is((get($pa, '/cost?u=c3'))[0] . ',' . redis_cmd('LLEN', 'aai:rl:units:c3'),
       '200,1', 'no cost: one unit');
    is((get($pa, '/cost?u=c4&cost=0'))[0] . ','
       . redis_cmd('EXISTS', 'aai:rl:units:c4'), '200,0',
       'cost=0: checked, nothing spent');
    is((get($pa, '/cost?u=c5&cost=x1'))[0] . ','
       . redis_cmd('LLEN', 'aai:rl:units:c5'), '200,1',
       'a cost that is not a number counts one');

    # one minute window (10r/m) for the three requests and the admin GET
    # below: past its edge the 10 would count as the previous window's
    window_margin(60_000_000, 10);
    my @c = map { (get($_->[0], "/costc?u=k1&cost=$_->[1]"))[0] }
            [$pa, 6], [$pb, 5], [$pa, 4];
    is(join(',', @c), '200,429,200', 'counter: 6, then 5 rejected, then 4');
    like(rl_counter('aai:rl:unitsc:k1'), qr/^c\d+:10:0$/,
         'counter: the key counts 10');
    my ($ast, $aj) = admin($pb, 'zone=unitsc&key=k1');
    is("$ast $aj->{count} $aj->{algorithm}", '200 10 counter',
       'admin GET: a counter zone');

    # gcra, 6 s per unit, burst 9: 10 units at once
    @c = map { (get($_->[0], "/costg?u=g1&cost=$_->[1]"))[0] }
         [$pa, 6], [$pb, 5], [$pa, 4];
    is(join(',', @c), '200,429,200', 'gcra: 6, then 5 rejected, then 4');
}


# --- usage charged from the response, two instances --------------------------

sub usage { redis_cmd('LLEN', "aai:rl:tokens:$_[0]") }

{
    my @st;
    for my $i (1 .. 5) {
        my $before = usage('alice');
        my ($st) = get($i % 2 ? $pa : $pb, '/llm?u=alice&t=300');
        push @st, $st;
        if ($st == 200) {
            wait_until(5, sub { usage('alice') == $before + 300 });
        }
    }
    is(join(',', @st), '200,200,200,200,429',
       '300 tokens a response, 1000 a minute: 4 admitted, the 5th rejected');
    is(usage('alice'), 1200, 'usage in Redis exactly 4 x 300');

    my $ma = metrics_wait($pa, '/metrics', sub {
        ($_[0]->{'aai_ratelimit_charged_units_total{zone="tokens"}'} // 0)
            == 600 });
    my $mb = metrics_get($pb, '/metrics');
    is($ma->{'aai_ratelimit_charged_units_total{zone="tokens"}'} . ','
       . $mb->{'aai_ratelimit_charged_units_total{zone="tokens"}'},
       '600,600', 'each instance counts the units it charged');
    is($ma->{'aai_ratelimit_charges_dropped_total{zone="tokens"}'}, 0,
       'no charge lost');

    my ($st, $h) = get($pa, '/llm?u=bob&t=');
    is($st, 200, 'a response without the header');
    sleep 0.3;
    is(redis_cmd('EXISTS', 'aai:rl:tokens:bob'), 0, '... charges nothing');

    # a charge above the count spends the whole count, no more
    get($pb, '/llm?u=carol&t=5000');
    wait_until(5, sub { usage('carol') > 0 });
    is(usage('carol'), 1000, 'a charge above the count spends the count');
    is((get($pa, '/llm?u=carol&t=1'))[0], 429, '... and the key is over');
}

{
    # counter zones count tokens in one number
    my @st;
    for my $i (1 .. 5) {
        my ($st) = get($i % 2 ? $pa : $pb, '/llmc?u=dave&t=300');
        push @st, $st;
        if ($st == 200) {
            wait_until(5, sub {
                (rl_counter('aai:rl:tokc:dave') // '')
                    =~ /^c\d+:${\ (300 * $i)}:/ });
        }
    }
    is(join(',', @st), '200,200,200,200,429', 'counter: 4 admitted');
    like(rl_counter('aai:rl:tokc:dave'), qr/^c\d+:1200:0$/,
         'counter: usage exactly 1200');
}

{
    # a charge goes with the next batch: two zones on the request
    my ($st) = get($pa, '/both?u=erin&t=250');
    wait_until(5, sub { usage('erin') == 250 });
    is($st . ',' . usage('erin') . ',' . redis_cmd('LLEN', 'aai:rl:chat:erin'),
       '200,250,1', 'charge zone and request zone together');
}


# --- the admin endpoint -----------------------------------------------------

sub admin {
    my ($port, $args, $method) = @_;
    my ($st, $h, $body) = http_get($port, "/admin?$args", {}, $method);
    my $j = eval { decode_json($body) };
    return ($st // 0, $j // { raw => $body }, $h);
}

{
    my ($st, $j, $h) = admin($pa, 'zone=chat&key=free1');
    is($st, 200, 'admin GET');
    like($h->{'content-type'}, qr{^application/json}, '... JSON');
    is(join(',', map { $j->{$_} } qw(zone key count remaining in_flight
                                      policy limit window algorithm)),
       'chat,free1,2,0,0,"chat";q=2;w=60,2,60,sliding',
       'admin GET: the numbers of a full key');
    ok($j->{reset} > 0 && $j->{reset} <= 60, "reset $j->{reset}");

    ($st, $j) = admin($pa, 'zone=chat&key=free1', 'DELETE');
    is("$st $j->{deleted}", '200 1', 'admin DELETE resets the key');
    is(redis_cmd('EXISTS', 'aai:rl:chat:free1'), 0, '... gone from Redis');
    ($st, $j) = admin($pa, 'zone=chat&key=free1');
    is("$j->{count},$j->{remaining}", '0,2', 'admin GET after: all left');
    is((get($pa, '/chat?u=free1'))[0], 200,
       'the user passes again (blocklist forgotten)');

    get($pa, '/ip');
    ($st, $j) = admin($pa, 'zone=ipz&key=127.0.0.1');
    is("$st $j->{count} $j->{remaining}", '200 1 2',
       '$binary_remote_addr zone: the address in text');

    ($st, $j) = admin($pa, 'zone=nope&key=x');
    is("$st $j->{error}", '400 unknown zone: "nope"', 'unknown zone: 400');
    ($st, $j) = admin($pa, 'zone=chat');
    is("$st $j->{error}", '400 missing key', 'missing key: 400');
    ($st, $j) = admin($pa, 'key=x');
    is("$st $j->{error}", '400 missing zone', 'missing zone: 400');
    ($st, $j) = admin($pa, 'zone=ipz&key=not-an-ip');
    is("$st $j->{error}", '400 invalid key, an IP address is expected: '
       . '"not-an-ip"', 'a key that is not an address: 400');
    ($st, $j) = admin($pa, 'zone=chat&key=x', 'POST');
    is($st, 405, 'POST: 405');
}


# --- shadow zones, near-limit ------------------------------------------------

{
    my @r = map { rl_headers($pa, '/shadow?u=sh1') } 1 .. 6;
    is_deeply(\@r, [ (map { "200 \"enf\";q=5;w=60 \"enf\";r=$_;t=60" }
                      4, 3, 2, 1, 0),
                     '429 "enf";q=5;w=60 "enf";r=0;t=60' ],
              'a shadow zone never rejects; the enforced zone does, '
              . 'and sets the headers');
    is(redis_cmd('LLEN', 'aai:rl:shadow:sh1') . ','
       . redis_cmd('LLEN', 'aai:rl:enf:sh1'), '2,5',
       'the shadow zone spends what it would admit, the enforced its own');
    my $m = metrics_get($pa, '/metrics');
    is(join(',', map { $m->{"aai_ratelimit_requests_total{zone=\"shadow\","
                           . "outcome=\"$_\"}"} // 'none' }
                 qw(passed dry_run_rejected rejected)),
       '2,4,0', 'shadow zone metrics: 2 passed, 4 would have been rejected');
    ok(scalar(grep { /limiting requests, dry run, by aai_ratelimit zone "shadow"/ }
              file_lines("$prefa/logs/error.log")), 'shadow rejections logged');

    # dry_run=nospend: checked against the zone's usage, never spends
    is(join(',', map { (get($pa, '/sz?u=sz1'))[0] } 1 .. 2), '200,200',
       'the enforced location fills the zone');
    is(join(',', map { (get($pa, '/szn?u=sz1'))[0] } 1 .. 3), '200,200,200',
       'dry_run=nospend never rejects');
    is(redis_cmd('LLEN', 'aai:rl:sz:sz1'), 2, '... and never spends');
    is((get($pa, '/szn?u=sz2'))[0] . ',' . redis_cmd('EXISTS', 'aai:rl:sz:sz2'),
       '200,0', '... not even when it would admit');
    $m = metrics_get($pa, '/metrics');
    is($m->{'aai_ratelimit_requests_total{zone="sz",outcome="dry_run_rejected"}'},
       3, 'nospend shadow rejections counted');

    # near_limit: admitted with less than 20 % of the quota left
    my @st = map { (get($_ % 2 ? $pb : $pa, '/near?u=n1'))[0] } 0 .. 10;
    is(join(',', @st), join(',', (200) x 10, 429), 'near: 10 admitted');
    my $na = metrics_get($pa, '/metrics');
    my $nb = metrics_get($pb, '/metrics');
    my $near = $na->{'aai_ratelimit_requests_total{zone="near",outcome="near_limit"}'}
             + $nb->{'aai_ratelimit_requests_total{zone="near",outcome="near_limit"}'};
    is($near, 2, 'near_limit counts the admissions with 1 and 0 left');
}


# --- in-flight limits across instances --------------------------------------

sub inflight { redis_cmd('ZCARD', "aai:rl:streams:$_[0]") }

{
    # three slow responses (about 2 s) for one user on two instances
    my $t0 = time;
    my @r = http_concurrent([ [$pa, '/stream?u=sam&rate=100'],
                              [$pb, '/stream?u=sam&rate=100'],
                              [$pa, '/stream?u=sam&rate=100'] ]);
    my @st = sort map { $_->[0] // 0 } @r;
    is(join(',', @st), '200,200,429',
       'concurrency=2: three at once on two instances, two admitted');
    ok(time - $t0 > 1, 'the admitted ones were slow') or diag(time - $t0);
    ok(wait_until(5, sub { inflight('sam') == 0 }),
       'afterwards the slots are free');
    is((get($pb, '/stream?u=sam&rate=0'))[0], 200, '... and a request passes');

    # the client goes away: its lease goes with it
    my @socks = map {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $_,
                                      Proto => 'tcp') or die "connect: $!";
        syswrite($s, "GET /stream?u=tom&rate=20 HTTP/1.1\r\n"
                     . "Host: localhost\r\n\r\n");
        $s;
    } $pa, $pb;
    ok(wait_until(3, sub { inflight('tom') == 2 }), 'two leases taken');
    my (undef, $aj) = admin($pb, 'zone=streams&key=tom');
    is("$aj->{in_flight},$aj->{remaining},$aj->{algorithm}",
       '2,0,concurrency', 'admin: in flight');
    close $_ for @socks;
    ok(wait_until(5, sub { inflight('tom') == 0 }),
       'clients gone: the leases are released');

    # a request longer than the lease keeps it (renewed every third)
    my $long = sub { http_get($pa, '/short?u=rita&rate=60') };
    my $pid = fork();
    if ($pid == 0) { $long->(); POSIX::_exit(0); }
    ok(wait_until(3, sub { redis_cmd('ZCARD', 'aai:rl:short:rita') == 1 }),
       'lease=1s: the long request holds its lease');
    sleep 1.5;
    is((get($pb, '/short?u=rita&rate=0'))[0], 429,
       'after the lease time the long request still holds it (renewed)');
    waitpid($pid, 0);
    ok(wait_until(3, sub { redis_cmd('EXISTS', 'aai:rl:short:rita') == 0 }),
       'released at its end');
}

$stopa->();
$stopb->();


# --- an instance dies with requests in flight --------------------------------

{
    my $upk = free_port();
    (my $kconf = $conf) =~ s/127\.0\.0\.1:$up\b/127.0.0.1:$upk/g;
    my ($pk, $stopk, $prefk) = start_nginx_instance('rl025k', $kconf);

    my $pid = fork();
    if ($pid == 0) {
        http_concurrent([ [$pk, '/short?u=kim&rate=20'] ]);
        POSIX::_exit(0);
    }
    ok(wait_until(3, sub { redis_cmd('ZCARD', 'aai:rl:short:kim') == 1 }),
       'a lease taken');
    kill 'KILL', worker_pids(master_pid($prefk));
    my $t0 = time;
    ok(redis_cmd('ZCARD', 'aai:rl:short:kim') == 1,
       'worker killed: its lease stays');
    ok(wait_until(5, sub { redis_cmd('EXISTS', 'aai:rl:short:kim') == 0 }),
       '... until the lease time');
    my $gone = time - $t0;
    ok($gone < 3, "freed after the lease time (1 s): $gone");
    waitpid($pid, 0);
    ok(wait_until(5, sub { (get($pk, '/short?u=kim&rate=0'))[0] == 200 }),
       'the slot is free again');
    $stopk->();
}


# --- Redis down: a charge is tried, then counted lost ------------------------

{
    my $dead = free_port();
    (my $dconf = $conf) =~ s/127\.0\.0\.1:\$TEST_NGINX_REDIS_PORT/127.0.0.1:$dead/;
    $dconf =~ s/timeout=3s/timeout=3s connect_timeout=100ms/;
    my $up3 = free_port();
    $dconf =~ s/127\.0\.0\.1:$up\b/127.0.0.1:$up3/g;
    my ($pd, $stopd, $prefd) = start_nginx_instance('rl025d', $dconf);

    my ($st) = get($pd, '/llm?u=frank&t=300');
    is($st, 200, 'Redis down: fallback allow');

    my $m = metrics_wait($pd, '/metrics', sub {
        ($_[0]->{'aai_ratelimit_charges_dropped_total{zone="tokens"}'} // 0)
            >= 1 }, 10);
    is($m->{'aai_ratelimit_charges_dropped_total{zone="tokens"}'}, 1,
       'the charge is counted lost after its tries');
    ok(scalar(grep { /charge of 300 lost/ } file_lines("$prefd/logs/error.log")),
       'and logged');

    $stopd->();
}


# --- configuration -----------------------------------------------------------

{
    my $base = "    aai_ratelimit_redis 127.0.0.1:1;\n"
             . "    aai_ratelimit_zone z key=\$arg_u rate=1r/s;\n";

    my ($rc, $out) = nginx_t($base . "server { location / { aai_ratelimit z bogus=1; } }");
    isnt($rc, 0, 'unknown parameter: nginx -t fails');
    like($out, qr/invalid parameter "bogus=1" in "aai_ratelimit z"/,
         '... naming it');

    ($rc, $out) = nginx_t($base . "server { location / { aai_ratelimit z cost=; } }");
    like($out, qr/invalid parameter "cost=" in "aai_ratelimit z"/,
         'empty cost= is refused');

    ($rc, $out) = nginx_t("    aai_ratelimit_redis 127.0.0.1:1;\n"
                          . "    aai_ratelimit_zone z key=\$arg_u rate=1r/s count=;\n");
    like($out, qr/invalid count "" in "aai_ratelimit_zone"/,
         'empty count= is refused');

    ($rc, $out) = nginx_t($base . "server { location / { aai_ratelimit off cost=1; } }");
    isnt($rc, 0, '"aai_ratelimit off" takes no parameters');

    ($rc, $out) = nginx_t($base . "server { location / { aai_ratelimit z cost=\$arg_c charge=\$arg_t; } }");
    is($rc, 0, 'cost= and charge= together') or diag($out);
}

run_tests();

# a worker is killed (its leases expire)
AaiTest::logs_once_more(allow => [qr/worker process \d+ exited on signal 9\b/]);

__DATA__

=== TEST 1: the runner's own nginx: a location inherits the zones' parameters
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone inh key=$arg_u rate=5r/m;
--- config
    aai_ratelimit inh cost=$arg_c;
    location /t {
        empty_gif;
    }
--- request eval
["GET /t?u=i&c=3", "GET /t?u=i&c=3"]
--- error_code eval
[200, 429]
--- aai_before
redis_flushdb();
