# ngx_http_aai_ratelimit_module's Lua script (lua/ratelimit.lua): the C
# header that embeds it is what scripts/lua2c makes of it; the module loads
# the function library made of it (FUNCTION LOAD) and calls it (FCALL; the
# EVALSHA fallback is t/037-ratelimit-function.t's); and the script itself,
# run with EVAL against the real Redis as the module calls it, replies and
# leaves the keys as lua/ratelimit.lua says, for each algorithm.  Then the
# debug log (nginx --with-debug, as Debian's) shows each request's path:
# queued, batch sent, reply, decision, blocklist, fallback, delay, headers.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Digest::SHA qw( sha1_hex );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

# nothing listens there: connections are refused
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

sub slurp {
    my $path = shift;
    open(my $fh, '<:raw', $path) or die "$path: $!\n";
    local $/;
    return scalar <$fh>;
}

my $LUA = slurp('lua/ratelimit.lua');
my $SHA = sha1_hex($LUA);
$ENV{TEST_NGINX_LUA_SHA} = $SHA;

# the function library, as ngx_http_aai_ratelimit_script.c makes it: its
# name, then the script without its last line, then the library's end
my $LIBEND = slurp('lua/ratelimit_library.lua');
my $FN = 'aai_ratelimit_' . substr(sha1_hex($LUA . $LIBEND), 0, 12);
my $LIB = $LUA;
$LIB =~ s/^return check\(KEYS, ARGV\)\n\z//m or die "no EVAL line\n";
$LIB = "#!lua name=$FN\nlocal library = '$FN'\n$LIB$LIBEND";
$ENV{TEST_NGINX_LUA_FN} = $FN;

my $SLIDING = 0;
my $GCRA    = 1;
my $COUNTER = 2;
my $MINUTE  = 60_000_000;      # us

# --- the committed C header is made from the .lua file ---------------------

{
    my $lua2c = 'scripts/lua2c lua/ratelimit.lua ngx_http_aai_ratelimit_script'
                . ' lua/ratelimit_library.lua'
                . ' ngx_http_aai_ratelimit_library_end';
    my $made = `$lua2c`;
    is($?, 0, 'scripts/lua2c runs');
    ok($made eq slurp('ngx_http_aai_ratelimit_lua.h'),
       'ngx_http_aai_ratelimit_lua.h is lua/ratelimit.lua as made by '
       . 'scripts/lua2c (run "make lua")');
    is(redis_cmd('SCRIPT', 'LOAD', $LUA), $SHA, 'Redis loads it as its SHA-1');
    is(redis_cmd('FUNCTION', 'LOAD', 'REPLACE', $LIB), $FN,
       'Redis loads the library made of it');
}

# --- the module loads that library, and calls its function ----------------

{
    my ($port, $stop) = start_nginx_instance('rl029', <<'_EOC_');
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone s029 key=$arg_u rate=10r/m;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /s { aai_ratelimit s029; empty_gif; }
    }
_EOC_

    redis_flushdb();
    redis_cmd('FUNCTION', 'FLUSH');

    # the script's commands (client "lua") and the client's own (PING)
    # left out

    my @st;
    my @c = grep { $_->{client} ne 'lua'
                   && $_->{args}[0] =~ /^(?:EVAL|FCALL|FUNCTION)/i }
            redis_monitor(sub { @st = http_get($port, '/s?u=sha', {}) });

    is($st[0], 200, 'module: admitted');
    is(join(' ', map { uc $_->{args}[0] } @c), 'FCALL FUNCTION FCALL',
       'module: FCALL, not found, FUNCTION LOAD, then FCALL');
    is($c[0]{args}[1], $FN, 'module: FCALL names the library\'s function');
    ok(defined $c[1]{args}[3] && $c[1]{args}[3] eq $LIB,
       'module: FUNCTION LOAD REPLACE sends the library made of the file');

    @c = grep { $_->{client} ne 'lua'
                && $_->{args}[0] =~ /^(?:EVAL|FCALL|FUNCTION)/i }
         redis_monitor(sub { @st = http_get($port, '/s?u=sha', {}) });
    is(join(' ', map { uc $_->{args}[0] } @c), 'FCALL',
       'module: then FCALL alone');

    $stop->();
}

# --- the script against Redis ----------------------------------------------

# the layout: per request its zones, each [definition, key index, shared];
# a charge (charge=) is { charge => [definition, key index, shared] }
sub layout {
    my $s = '';
    for my $req (@_) {
        if (ref $req eq 'HASH') {
            my ($def, $key, $shared) = @{ $req->{charge} };
            $s .= chr(0) . chr($def) . chr(($key >> 8) | ($shared ? 0x80 : 0))
                  . chr($key & 0xff);
            next;
        }
        $s .= chr(scalar @$req);
        for my $z (@$req) {
            my ($def, $key, $shared) = @$z;
            $s .= chr($def) . chr(($key >> 8) | ($shared ? 0x80 : 0))
                  . chr($key & 0xff);
        }
    }
    return $s;
}

# FCALL as the module sends it: keys, layout, trim, definitions; with
# costs => 1 (count=, cost=, charge=, dry_run, concurrency=) the flag is "2"
# or "3" followed by the batch's lease prefix, and each definition has a
# sixth argument, its cost and "s" or "n" for a shadow zone.  Every other
# check is an EVAL of the file (the module's fallback where Redis refuses
# functions): both run the same check, and the library's tables, made
# once, must not keep anything of one call for the next.
my $calls = 0;
sub check {
    my (%o) = @_;
    my @keys = @{ $o{keys} };
    my $flag = $o{costs} ? ($o{trim} ? '3' : '2') . ($o{lease} // 'L:')
                         : ($o{trim} ? '1' : '0');
    return redis_cmd($calls++ % 2 ? ('EVAL', $LUA) : ('FCALL', $FN),
                     scalar @keys, @keys,
                     layout(@{ $o{requests} }), $flag,
                     map { @$_ } @{ $o{defs} });
}

redis_cmd('FUNCTION', 'LOAD', 'REPLACE', $LIB);

sub in_range {
    my ($v, $lo, $hi, $name) = @_;
    ok(defined $v && $v >= $lo && $v <= $hi, "$name: $v in [$lo, $hi]")
        or diag("got " . ($v // 'undef'));
}

# sliding window without burst, an unshared key: the short reply (the
# requests left), then a rejection (-1, rejected, delay, remaining, reset,
# retry after); the key is a list of the 3 admissions, kept 1.5 windows

{
    redis_flushdb();
    my @a = (keys => ['s1'], requests => [[[1, 1, 0]]],
             defs => [[$SLIDING, 3, $MINUTE, 0, 0]]);

    is_deeply(check(@a), [2], 'sliding: 1st, 2 left');
    is_deeply(check(@a), [1], 'sliding: 2nd, 1 left');
    is_deeply(check(@a), [0], 'sliding: 3rd, none left');

    my $r = check(@a);
    is_deeply([ @$r[0 .. 3] ], [-1, 1, 0, 0], 'sliding: 4th rejected');
    in_range($r->[4], 59_000, 60_000, 'sliding: reset ms');
    in_range($r->[5], 59_000, 60_000, 'sliding: retry after ms');

    is(redis_cmd('TYPE', 's1'), 'list', 'sliding: a list');
    is(redis_cmd('LLEN', 's1'), 3, 'sliding: the 3 admissions, not the 4th');
    in_range(redis_cmd('PTTL', 's1'), 80_000, 90_001, 'sliding: TTL');
}

# sliding window, expired entries at the head: all dropped (the binary
# search beyond the 4 oldest), the request admitted

{
    redis_flushdb();
    my $old = redis_time_us() - 2 * $MINUTE;
    redis_cmd('RPUSH', 's2', map { $old + $_ } 1 .. 6);

    is_deeply(check(keys => ['s2'], requests => [[[1, 1, 0]]],
                    defs => [[$SLIDING, 3, $MINUTE, 0, 0]], trim => 1),
              [2], 'expired: 6 expired entries count for nothing');
    is(redis_cmd('LLEN', 's2'), 1, 'expired: dropped, the admission kept');
}

# a key of another type counts as empty and is overwritten

{
    redis_flushdb();
    redis_cmd('SET', 's3', 'junk');

    is_deeply(check(keys => ['s3'], requests => [[[1, 1, 0]]],
                    defs => [[$SLIDING, 3, $MINUTE, 0, 0]]),
              [2], 'other type: admitted as on an empty key');
    is(redis_cmd('TYPE', 's3'), 'list', 'other type: now a list');
}

# GCRA, 10 per second: the key holds the next allowed time (us); without
# burst the next request is rejected, with burst 2 and delay 0 it waits

{
    redis_flushdb();
    my $now = redis_time_us();
    my @a = (keys => ['g1'], requests => [[[1, 1, 0]]],
             defs => [[$GCRA, 10, 1_000_000, 0, 0]]);

    is_deeply(check(@a), [0, 100], 'gcra: admitted, 0 left, reset 100 ms');
    in_range(redis_cmd('GET', 'g1'), $now + 100_000, $now + 100_000 + 2e6,
             'gcra: the next allowed time');
    in_range(redis_cmd('PTTL', 'g1'), 1, 101, 'gcra: TTL');

    my $r = check(@a);
    is_deeply([ @$r[0 .. 3] ], [-1, 1, 0, 0], 'gcra: 2nd rejected');
    in_range($r->[5], 1, 100, 'gcra: retry after ms');

    redis_flushdb();
    @a = (keys => ['g2'], requests => [[[1, 1, 0]]],
          defs => [[$GCRA, 10, 1_000_000, 2, 0]]);

    is_deeply(check(@a), [2, 100], 'gcra burst: 1st, 2 left');
    $r = check(@a);
    is_deeply([ @$r[0, 1] ], [-1, 0], 'gcra burst: 2nd admitted, delayed');
    in_range($r->[2], 50, 100, 'gcra burst: delay ms');
}

# the sliding window counter: three 64-bit integers, the window's start,
# its count and the previous window's count (rl_counter shows them)

{
    redis_flushdb();
    my @a = (keys => ['c1'], requests => [[[1, 1, 0]]],
             defs => [[$COUNTER, 2, $MINUTE, 0, 0]]);

    my $r = check(@a);
    is($r->[0], 1, 'counter: 1st, 1 left');
    $r = check(@a);
    is($r->[0], 0, 'counter: 2nd, none left');
    $r = check(@a);
    is_deeply([ @$r[0 .. 3] ], [-1, 1, 0, 0], 'counter: 3rd rejected');

    my $v = rl_counter('c1');
    like($v, qr/^c\d+:2:0$/, 'counter: 2 counted in this window');
    my ($start) = $v =~ /^c(\d+):/;
    is($start % $MINUTE, 0, 'counter: the window starts on a minute');
    in_range(redis_cmd('PTTL', 'c1'), 1, 120_001, 'counter: TTL');
}

# two zones: one rejects, the request spends nothing in the other

{
    redis_flushdb();
    my @a = (keys => ['z1', 'z2'], requests => [[[1, 1, 0], [2, 2, 0]]],
             defs => [[$SLIDING, 5, $MINUTE, 0, 0],
                      [$SLIDING, 1, $MINUTE, 0, 0]]);

    is_deeply(check(@a), [2, 0, 60_000],
              'two zones: the most restrictive, its remaining and reset');

    my $r = check(@a);
    is(scalar @$r, 11, 'two zones: rejected, 5 values per zone');
    is_deeply([ @$r[0, 1, 6] ], [-1, 0, 1],
              'two zones: the 2nd zone rejects, the 1st does not');
    is(redis_cmd('LLEN', 'z1'), 1, 'two zones: the 1st zone spent nothing');
    is(redis_cmd('LLEN', 'z2'), 1, 'two zones: the 2nd neither');
}

# two requests of one batch share a key: simultaneous, written once

{
    redis_flushdb();
    my $r = check(keys => ['b1'], requests => [[[1, 1, 1]], [[1, 1, 1]]],
                  defs => [[$SLIDING, 1, $MINUTE, 0, 0]]);

    is_deeply([ @$r[0 .. 5] ], [0, 60_000, -1, 1, 0, 0],
              'shared: the 1st admitted, the 2nd rejected');
    is(scalar @$r, 8, 'shared: one record per request');
    is(redis_cmd('LLEN', 'b1'), 1, 'shared: one admission recorded');
    in_range(redis_cmd('PTTL', 'b1'), 80_000, 90_001, 'shared: TTL');
}

# cost=: a request of cost 3 spends 3 entries of a sliding window; one of
# cost 3 with 2 left is rejected and spends nothing; a cost of 0 checks for
# one unit and spends none

{
    redis_flushdb();
    my @d = ([$SLIDING, 5, $MINUTE, 0, 0, '3'],
             [$SLIDING, 5, $MINUTE, 0, 0, '0']);

    is_deeply(check(keys => ['k1'], requests => [[[1, 1, 0]]], defs => \@d,
                    costs => 1),
              [2, 60_000], 'cost: 3 units spent, 2 left');
    is(redis_cmd('LLEN', 'k1'), 3, 'cost: 3 entries');

    my $r = check(keys => ['k1'], requests => [[[1, 1, 0]]], defs => \@d,
                  costs => 1);
    is_deeply([ @$r[0 .. 3] ], [-1, 1, 0, 0], 'cost: 3 more rejected');
    is(redis_cmd('LLEN', 'k1'), 3, 'cost: the rejection spent nothing');

    is_deeply(check(keys => ['k1'], requests => [[[2, 1, 0]]], defs => \@d,
                    costs => 1),
              [1, 60_000], 'cost 0: checked for one unit');
    is(redis_cmd('LLEN', 'k1'), 3, 'cost 0: nothing spent');

    # GCRA, 10 per second: cost 4 moves the next allowed time 400 ms

    redis_flushdb();
    my $now = redis_time_us();
    is_deeply(check(keys => ['g1'], requests => [[[1, 1, 0]]],
                    defs => [[$GCRA, 10, 1_000_000, 5, 5, '4']], costs => 1),
              [2, 400], 'cost gcra: 4 periods, 2 of the burst left');
    in_range(redis_cmd('GET', 'g1'), $now + 400_000, $now + 400_000 + 2e6,
             'cost gcra: the next allowed time 400 ms on');

    # counter: cost 2 counts 2

    redis_flushdb();
    is(check(keys => ['c1'], requests => [[[1, 1, 0]]],
             defs => [[$COUNTER, 5, $MINUTE, 0, 0, '2']], costs => 1)->[0],
       3, 'cost counter: 3 left');
    like(rl_counter('c1'), qr/^c\d+:2:0$/, 'cost counter: 2 counted');
}

# charge=: a request of no zones adds the definition's cost to the key,
# answered by nothing; the next request sees the usage

{
    redis_flushdb();
    my @d = ([$SLIDING, 10, $MINUTE, 0, 0, '7'],
             [$SLIDING, 10, $MINUTE, 0, 0, '1']);

    is_deeply(check(keys => ['u1'], requests => [{ charge => [1, 1, 0] }],
                    defs => \@d, costs => 1),
              [], 'charge: no reply');
    is(redis_cmd('LLEN', 'u1'), 7, 'charge: 7 units in the window');

    my $r = check(keys => ['u1'], requests => [[[2, 1, 0]]], defs => \@d,
                  costs => 1);
    is_deeply($r, [2], 'charge: the next request sees 7 spent');

    # counter and GCRA charges

    redis_flushdb();
    check(keys => ['c1', 'g1'],
          requests => [{ charge => [1, 1, 0] }, { charge => [2, 2, 0] }],
          defs => [[$COUNTER, 100, $MINUTE, 0, 0, '30'],
                   [$GCRA, 10, 1_000_000, 0, 0, '3']], costs => 1);
    like(rl_counter('c1'), qr/^c\d+:30:0$/, 'charge counter: 30');
    my $now = redis_time_us();
    in_range(redis_cmd('GET', 'g1'), $now + 200_000, $now + 300_000,
             'charge gcra: 3 periods on');
}

# shadow zones (dry_run): "s" rejects nothing and records nothing it
# rejects; "n" never records

{
    redis_flushdb();
    my @d = ([$SLIDING, 1, $MINUTE, 0, 0, '1s'],
             [$SLIDING, 1, $MINUTE, 0, 0, '1n']);

    check(keys => ['h1'], requests => [[[1, 1, 0]]], defs => \@d,
          costs => 1);
    is(redis_cmd('LLEN', 'h1'), 1, 'shadow s: an admission recorded');
    my $r = check(keys => ['h1'], requests => [[[1, 1, 0]]], defs => \@d,
                  costs => 1);
    is_deeply([ @$r[0 .. 1] ], [-1, 1], 'shadow s: the zone says rejected');
    is(redis_cmd('LLEN', 'h1'), 1, 'shadow s: the rejection not recorded');

    check(keys => ['h2'], requests => [[[2, 1, 0]]], defs => \@d,
          costs => 1) for 1 .. 2;
    is(redis_cmd('EXISTS', 'h2'), 0, 'shadow n: nothing recorded');
}

# concurrency=: a sorted set of leases "<prefix><request>" scored with
# their expiry; at the limit the next is rejected, retry after the oldest
# lease's expiry; an expired lease frees its slot

{
    redis_flushdb();
    my $CONC = 3;
    my @d = ([$CONC, 2, 30_000_000, 0, 0, '1']);

    my $r = check(keys => ['l1'], requests => [[[1, 1, 1]], [[1, 1, 1]]],
                  defs => \@d, costs => 1, lease => 'w1:');
    is_deeply($r, [1, 30_000, 0, 30_000], 'concurrency: 2 leases taken');
    is_deeply(redis_cmd('ZRANGE', 'l1', 0, -1), ['w1:1', 'w1:2'],
              'concurrency: the leases named by prefix and request');
    in_range(redis_cmd('PTTL', 'l1'), 29_000, 30_001, 'concurrency: TTL');

    $r = check(keys => ['l1'], requests => [[[1, 1, 0]]], defs => \@d,
               costs => 1, lease => 'w2:');
    is_deeply([ @$r[0 .. 3] ], [-1, 1, 0, 0], 'concurrency: the 3rd rejected');
    in_range($r->[5], 29_000, 30_000, 'concurrency: retry after the oldest');
    is(redis_cmd('ZCARD', 'l1'), 2, 'concurrency: no lease for it');

    redis_cmd('ZADD', 'l1', redis_time_us() - 1, 'w1:1');
    $r = check(keys => ['l1'], requests => [[[1, 1, 0]]], defs => \@d,
               costs => 1, lease => 'w3:');
    is_deeply($r, [0, 30_000], 'concurrency: an expired lease frees a slot');
    is_deeply(redis_cmd('ZRANGE', 'l1', 0, -1), ['w1:2', 'w3:1'],
              'concurrency: the expired lease dropped');
}

# --- one command per check (issue 15): the counter's BITFIELD, GCRA's SET
# ... GET; the keys they leave -------------------------------------------------

# the commands the script ran (client "lua") while $code ran, TIME left out
sub script_cmds {
    my $code = shift;
    return join ' ', map { uc $_->{args}[0] }
                     grep { $_->{client} eq 'lua'
                            && uc $_->{args}[0] ne 'TIME' }
                     redis_monitor($code);
}

# the start (us) of the fixed window of $w us now, at least $margin s from
# its end (waits for the next one otherwise)
sub window_start {
    my ($w, $margin) = @_;
    while (1) {
        my $now = redis_time_us();
        my $start = int($now / $w) * $w;
        return $start if $start + $w - $now > $margin * 1e6;
        select(undef, undef, undef, 0.2);
    }
}

my $HOUR = 3_600_000_000;

# counter: a new key is one BITFIELD (which adds the cost) and one SET (the
# key written whole, with its TTL); then each admission in the key's window
# is one BITFIELD, a rejection a second one (the cost taken back)

{
    redis_flushdb();
    my $start = window_start($HOUR, 10);
    my @a = (keys => ['f1'], requests => [[[1, 1, 0]]],
             defs => [[$COUNTER, 2, $HOUR, 0, 0]]);
    my $r;

    is(script_cmds(sub { $r = check(@a) }), 'BITFIELD SET',
       'counter key: a new key, BITFIELD then SET');
    is($r->[0], 1, 'counter key: 1 left');
    my $v = redis_cmd('GET', 'f1');
    is(length $v, 24, 'counter key: 24 bytes');
    is_deeply([ unpack 'q>3', $v ], [$start, 1, 0],
              'counter key: the window start, count 1, previous 0');
    # the script's PX is ceil((end - its TIME) / 1000) + 1 ms, from Redis's
    # time snapshot (whole ms, not later than the script's TIME); PTTL
    # subtracts its own time truncated to the ms, so it can exceed
    # (end - $now) / 1000 by up to 3 ms, never more
    my $now = redis_time_us();
    in_range(redis_cmd('PTTL', 'f1'), ($start + 2 * $HOUR - $now) / 1000 - 5000,
             ($start + 2 * $HOUR - $now) / 1000 + 3,
             'counter key: TTL to the end of the next window');

    is(script_cmds(sub { $r = check(@a) }), 'BITFIELD',
       'counter key: in its window, one BITFIELD');
    is($r->[0], 0, 'counter key: none left');
    is_deeply([ unpack 'q>3', redis_cmd('GET', 'f1') ], [$start, 2, 0],
              'counter key: count 2');

    is(script_cmds(sub { $r = check(@a) }), 'BITFIELD BITFIELD',
       'counter key: a rejection adds and takes back');
    is($r->[0], -1, 'counter key: the 3rd rejected');
    is_deeply([ unpack 'q>3', redis_cmd('GET', 'f1') ], [$start, 2, 0],
              'counter key: the rejection counted nothing');
}

# counter: the window rolled over (the key's count becomes the previous
# one, the key and its TTL written anew); a key two windows old, or of the
# text format of the releases before, counts as empty and is overwritten

{
    redis_flushdb();
    my $start = window_start($HOUR, 10);
    redis_cmd('SET', 'r1', pack('q>3', $start - $HOUR, 7, 3), 'PX', 100_000);
    redis_cmd('SET', 'r2', pack('q>3', $start - 2 * $HOUR, 50, 50));
    redis_cmd('SET', 'r3', "c$start:1000000:1000000");
    redis_cmd('SET', 'r4', redis_time_us() + 3_600_000_000);
    redis_cmd('RPUSH', 'r5', 1, 2, 3);
    my @d = ([$COUNTER, 100, $HOUR, 0, 0]);
    my $r;

    is(script_cmds(sub { $r = check(keys => ['r1'], requests => [[[1, 1, 0]]],
                                    defs => \@d) }),
       'BITFIELD SET', 'rollover: BITFIELD, then the key written');
    in_range($r->[0], 92, 99, 'rollover: the previous 7, weighted, count');
    is(rl_counter('r1'), "c$start:1:7",
       'rollover: count 1, the previous window 7');
    in_range(redis_cmd('PTTL', 'r1'), $HOUR / 1000, 2 * $HOUR / 1000 + 2,
             'rollover: TTL to the end of the next window');

    for my $k (qw( r2 r3 r4 r5 )) {
        $r = check(keys => [$k], requests => [[[1, 1, 0]]], defs => \@d);
        is($r->[0], 99, "other format $k: counted from 0");
        is(rl_counter($k), "c$start:1:0", "other format $k: overwritten");
        ok(redis_cmd('PTTL', $k) > 0, "other format $k: with a TTL");
    }
}

# counter rejections: on a rolled-over key the key is still written (its
# previous count kept); on a new key nothing is left; beside a zone that
# rejects, the count is taken back

{
    redis_flushdb();
    my $start = window_start($HOUR, 10);
    redis_cmd('SET', 'j1', pack('q>3', $start - $HOUR, 1000, 0));
    my $r = check(keys => ['j1'], requests => [[[1, 1, 0]]],
                  defs => [[$COUNTER, 2, $HOUR, 0, 0]]);
    is($r->[0], -1, 'rejected on rollover');
    is(rl_counter('j1'), "c$start:0:1000", 'rejected on rollover: count 0');
    ok(redis_cmd('PTTL', 'j1') > 0, 'rejected on rollover: a TTL');

    $r = check(keys => ['j2'], requests => [[[1, 1, 0]]],
               defs => [[$COUNTER, 2, $HOUR, 0, 0, '3']], costs => 1);
    is($r->[0], -1, 'cost over the limit: rejected');
    is(redis_cmd('EXISTS', 'j2'), 0, 'cost over the limit: no key left');

    redis_cmd('SET', 'j3', pack('q>3', $start, 4, 0), 'PX', 100_000);
    redis_cmd('RPUSH', 'j4', redis_time_us());
    $r = check(keys => ['j3', 'j4', 'j5'],
               requests => [[[1, 1, 0], [2, 2, 0], [1, 3, 0]]],
               defs => [[$COUNTER, 10, $HOUR, 0, 0],
                        [$SLIDING, 1, $MINUTE, 0, 0]]);
    is_deeply([ @$r[0, 1, 6, 11] ], [-1, 0, 1, 0],
              'beside a rejecting zone: the counters admit');
    is(rl_counter('j3'), "c$start:4:0", 'beside a rejecting zone: 4 still');
    is(redis_cmd('EXISTS', 'j5'), 0,
       'beside a rejecting zone: the new counter key gone');

    # dry_run: "s" adds and takes back what it rejects; "n" writes nothing
    redis_cmd('SET', 'j6', pack('q>3', $start, 2, 0), 'PX', 100_000);
    $r = check(keys => ['j6', 'j7'], requests => [[[1, 1, 0]], [[2, 2, 0]]],
               defs => [[$COUNTER, 2, $HOUR, 0, 0, '1s'],
                        [$COUNTER, 2, $HOUR, 0, 0, '1n']], costs => 1);
    is(rl_counter('j6'), "c$start:2:0", 'shadow s: the rejection taken back');
    is(redis_cmd('EXISTS', 'j7'), 0, 'shadow n: nothing written');
}

# counter and GCRA under batching: 20 requests in one batch, each of them
# in a counter zone of a shared key (15 at most), a counter zone of its own
# key (1 at most; the 1st request's key is full) and a GCRA zone of its own
# key: 15 admitted, and every zone of the 5 rejected left as it was

{
    redis_flushdb();
    my $start = window_start($HOUR, 10);
    redis_cmd('SET', 'u1', pack('q>3', $start, 1, 0), 'PX', 100_000);
    redis_cmd('SET', 'g3', redis_time_us() - 5_000_000);
    my @keys = ('ip', map({ "u$_" } 1 .. 20), map({ "g$_" } 1 .. 20));
    my @req = map { [[1, 1, 1], [2, 1 + $_, 0], [3, 21 + $_, 0]] } 1 .. 20;
    my $now = redis_time_us();
    my $r = check(keys => \@keys, requests => \@req,
                  defs => [[$COUNTER, 15, $HOUR, 0, 0],
                           [$COUNTER, 1, $HOUR, 0, 0],
                           [$GCRA, 10, $MINUTE, 0, 0]]);

    my @admitted;
    for (my $i = 0, my $n = 1; $i < @$r; $n++) {
        if ($r->[$i] == -1) {
            $i += 16;
        } else {
            push @admitted, $n;
            $i += 3;
        }
    }
    is("@admitted", join(' ', 2 .. 16), 'batch: the 2nd to the 16th admitted');
    is(rl_counter('ip'), "c$start:15:0", 'batch: the shared key counts 15');
    is(join(' ', map { rl_counter("u$_") // '-' } 1 .. 20),
       join(' ', ("c$start:1:0") x 16, ('-') x 4),
       'batch: each own counter 1, the rejected ones not written');
    is(join(' ', map { redis_cmd('EXISTS', "g$_") } 1 .. 20),
       join(' ', 0, (1) x 15, (0) x 4),
       'batch: a GCRA key per admission, the rejections left none');
    in_range(redis_cmd('GET', 'g3'), $now + 6_000_000, $now + 8_000_000,
             'batch: a GCRA time in the past replaced');
    is(scalar(grep { redis_cmd('PTTL', $_) < 0 }
              @{ redis_cmd('KEYS', '*') }), 0, 'batch: every key has a TTL');
}

# GCRA: an admission whose old time has passed is one SET ... GET; an old
# time not passed: written again (admitted within the burst) or given back
# (rejected); a key of another type is overwritten

{
    redis_flushdb();
    my @a = (keys => ['q1'], requests => [[[1, 1, 0]]],
             defs => [[$GCRA, 10, $MINUTE, 0, 0]]);
    my ($r, @m);
    my $now = redis_time_us();

    @m = grep { $_->{client} eq 'lua' && uc $_->{args}[0] ne 'TIME' }
         redis_monitor(sub { $r = check(@a) });
    is(join(' ', map { uc $_->{args}[0] } @m), 'SET', 'gcra: one SET');
    is(uc $m[0]{args}[-1], 'GET', 'gcra: SET ... GET');
    is_deeply($r, [0, 6000], 'gcra: admitted');
    in_range(redis_cmd('GET', 'q1'), $now + 6_000_000, $now + 8_000_000,
             'gcra: the next allowed time');

    my $old = redis_cmd('GET', 'q1');
    is(script_cmds(sub { $r = check(@a) }), 'SET SET',
       'gcra: over the rate, the old time given back');
    is($r->[0], -1, 'gcra: rejected');
    is(redis_cmd('GET', 'q1'), $old, 'gcra: the old time kept');
    in_range(redis_cmd('PTTL', 'q1'), 1, 6001, 'gcra: its TTL');

    redis_cmd('SET', 'q1', redis_time_us() - 1_000_000);
    is(script_cmds(sub { $r = check(@a) }), 'SET',
       'gcra: a time passed, one SET');
    is_deeply($r, [0, 6000], 'gcra: admitted again');

    redis_flushdb();
    @a = (keys => ['q2'], requests => [[[1, 1, 0]]],
          defs => [[$GCRA, 10, $MINUTE, 2, 2]]);
    check(@a);
    $old = redis_cmd('GET', 'q2');
    is(script_cmds(sub { $r = check(@a) }), 'SET SET',
       'gcra burst: the time not passed, written again');
    is($r->[0], 1, 'gcra burst: admitted, 1 of the burst left');
    in_range($r->[1], 6000, 12000, 'gcra burst: reset');
    is(redis_cmd('GET', 'q2'), $old + 6_000_000, 'gcra burst: one period on');

    redis_cmd('RPUSH', 'q3', 1);
    $now = redis_time_us();
    is_deeply(check(keys => ['q3'], requests => [[[1, 1, 0]]],
                    defs => [[$GCRA, 10, $MINUTE, 0, 0]]),
              [0, 6000], 'gcra other type: admitted');
    in_range(redis_cmd('GET', 'q3'), $now + 6_000_000, $now + 8_000_000,
             'gcra other type: overwritten');
}

# --- the debug log: each request's path ------------------------------------

# the limiter's debug lines a request added to an instance's log, as
# "what, what, ..." up to each line's first comma
sub path_of {
    my ($port, $prefix, $uri) = @_;
    my $log = "$prefix/logs/error.log";
    my $n = () = file_lines($log);
    my ($st) = http_get($port, $uri, {});
    my @l = file_lines($log);
    my $step = qr/(?<=[:\d]\ )aai_ratelimit\ ((?:zone|queued|waiting|batch
                  |reply\ of|decided|resuming|delaying|blocklist|Redis
                  |already|header\ filter)[^,\n]*)/x;
    my @path = map { /$step/ ? $1 : () } @l[$n .. $#l];
    s/ [0-9A-F]{8,} / P /g for @path;        # batch addresses
    return ($st // 0, join("\n", @path) . "\n");
}

{
    my ($port, $stop, $prefix) = start_nginx_instance('rl029d', <<'_EOC_');
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_ratelimit_zone d_one  key=$arg_u rate=10r/m;
    aai_ratelimit_zone d_min  key=$arg_u rate=1r/m;
    aai_ratelimit_zone d_slow key=$arg_u rate=10r/s burst=5 algorithm=gcra;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /one  { aai_ratelimit d_one; empty_gif; }
        location /min  { aai_ratelimit d_min; empty_gif; }
        location /slow { aai_ratelimit d_slow; empty_gif; }
    }
_EOC_

    redis_flushdb();
    redis_cmd('FUNCTION', 'LOAD', 'REPLACE', $LIB);

    my ($st, $path) = path_of($port, $prefix, '/one?u=path');
    is($st, 200, 'debug: admitted');
    is($path, <<'_EOP_', 'debug: checked in Redis');
zone "d_one" key "path"
queued in batch P as request 1
waiting for Redis
batch P sent: FCALL
batch P reply: type 2
reply of batch P for request 1: 1 values
decided by Redis: passed
resuming the request
header filter: zone 0
_EOP_

    ($st, $path) = path_of($port, $prefix, '/one');
    is($path, qq{zone "d_one": empty key\n}, 'debug: an empty key');

    path_of($port, $prefix, '/min?u=b');
    ($st, $path) = path_of($port, $prefix, '/min?u=b');
    is($st, 429, 'debug: rejected by Redis');
    like($path, qr{
        \Azone\ "d_min"\ key\ "b"\n
        queued\ in\ batch\ P\ as\ request\ 1\n
        waiting\ for\ Redis\n
        batch\ P\ sent:\ FCALL\n
        batch\ P\ reply:\ type\ 2\n
        reply\ of\ batch\ P\ for\ request\ 1:\ 6\ values\n
        blocklist:\ "d_min:b"\ added\ for\ \d+\ ms\n
        decided\ by\ Redis:\ rejected\n
        resuming\ the\ request\n
        header\ filter:\ zone\ 0\n\z}x,
        'debug: rejected by Redis, added to the blocklist') or diag($path);

    ($st, $path) = path_of($port, $prefix, '/min?u=b');
    is($st, 429, 'debug: rejected by the blocklist');
    like($path, qr{\Azone\ "d_min"\ key\ "b"\n
                   blocklist:\ "d_min:b"\ for\ \d+\ ms\n
                   decided\ by\ the\ blocklist:\ rejected\n
                   header\ filter:\ zone\ 0\n\z}x,
         'debug: the blocklist decides alone') or diag($path);

    path_of($port, $prefix, '/slow?u=s');
    ($st, $path) = path_of($port, $prefix, '/slow?u=s');
    is($st, 200, 'debug: delayed, then served');
    like($path, qr{reply\ of\ batch\ P\ for\ request\ 1:\ 6\ values\n
                   decided\ by\ Redis:\ passed\n
                   resuming\ the\ request\n
                   delaying\ the\ request\ \d+\ ms\n
                   already\ decided\n
                   header\ filter:\ zone\ 0\n\z}x,
         'debug: delayed, then the phase runs again') or diag($path);

    $stop->();
}

{
    my ($port, $stop, $prefix) = start_nginx_instance('rl029f', <<'_EOC_');
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT timeout=3s;
    aai_ratelimit_zone f_one key=$arg_u rate=10r/m;

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        location /f {
            aai_ratelimit f_one;
            aai_ratelimit_fallback local;
            empty_gif;
        }
    }
_EOC_

    my ($st, $path) = path_of($port, $prefix, '/f?u=down');
    is($st, 200, 'debug: Redis down, admitted by the local fallback');
    like($path, qr{\Azone\ "f_one"\ key\ "down"\n(?s:.*)
                   Redis\ unavailable:\ fallback\ "local"\n
                   decided\ by\ the\ local\ fallback:\ passed\n
                   header\ filter:\ zone\ 0\n\z}x,
         'debug: the fallback decides') or diag($path);

    $stop->();
}

run_tests();

AaiTest::logs_once_more();

__DATA__

=== TEST 1: on the runner's own nginx, the library Redis keeps is the file's
--- http_config
    aai_ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    aai_ratelimit_zone one key=$arg_u rate=10r/m;
--- config
    location /t {
        aai_ratelimit one;
        empty_gif;
    }
--- request
GET /t?u=script
--- error_code: 200
--- aai_before
redis_flushdb();
redis_cmd('FUNCTION', 'FLUSH');
--- aai_after
my $l = redis_cmd('FUNCTION', 'LIST', 'LIBRARYNAME', $ENV{TEST_NGINX_LUA_FN});
ok(@$l == 1 && $l->[0][1] eq $ENV{TEST_NGINX_LUA_FN},
   'the library of lua/ratelimit.lua is loaded');
