# ngx_http_aai_cache_module's Lua scripts (lua/cache_*.lua): the C headers
# that embed them are what scripts/lua2c -s makes of them; the module sends
# exactly those texts with EVAL; and each script, run with EVAL against the
# real Redis as the module calls it, replies and leaves the keys as its
# file says (the store, the store in pieces, the lock's renewal and
# release, the purge).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use AaiTest qw( :DEFAULT :util );
use Time::HiRes qw( sleep );
use Digest::SHA qw( sha256_hex );
use File::Path qw( make_path );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;

my $TEST = 't/059-cache-scripts.t';

sub slurp {
    my $path = shift;
    open(my $fh, '<:raw', $path) or die "$path: $!\n";
    local $/;
    return scalar <$fh>;
}

# what lua2c -s keeps of a script, so what the module sends: the file
# without its comment lines, blank lines and indentation (a+b: the files
# a and b one after the other)
sub sent {
    my $lua = join '', map { slurp($_) } split /\+/, shift;
    return join '', map { s/^\s+//r } grep { !/^\s*(?:--|$)/ }
                    split /^/m, $lua;
}

# header => [lua file, C name] ..., as "make lua" makes them; the part the
# store and the store in pieces share comes before each
my @HEADERS = (
    [ 'ngx_http_aai_cache_store_lua.h',
      [ 'lua/cache_shared.lua+lua/cache_store.lua',
        'ngx_http_aai_cache_store_lua' ],
      [ 'lua/cache_shared.lua+lua/cache_pieces.lua',
        'ngx_http_aai_cache_pieces_lua' ] ],
    [ 'ngx_http_aai_cache_lock_lua.h',
      [ 'lua/cache_renew.lua', 'ngx_http_aai_cache_renew_lua' ],
      [ 'lua/cache_release.lua', 'ngx_http_aai_cache_release_lua' ] ],
    [ 'ngx_http_aai_cache_purge_lua.h',
      [ 'lua/cache_purge.lua', 'ngx_http_aai_cache_purge_lua' ] ],
);

my %LUA = map { my $f = $_; ($f =~ m{lua/cache_(\w+)\.lua$})[0] => sent($f) }
          map { map { $_->[0] } @$_[1 .. $#$_] } @HEADERS;

# --- the committed C headers are made from the .lua files ------------------

{
    my %seen;
    my @files = sort grep { !$seen{$_}++ }
                map { map { split /\+/, $_->[0] } @$_[1 .. $#$_] } @HEADERS;
    is_deeply(\@files, [sort glob('lua/cache_*.lua')],
              'every lua/cache_*.lua has its header');

    for my $h (@HEADERS) {
        my ($header, @pairs) = @$h;
        my $made = `scripts/lua2c -s -t $TEST @{[ map { @$_ } @pairs ]}`;
        is($?, 0, "scripts/lua2c makes $header");
        ok($made eq slurp($header),
           "$header is " . join(' and ', map { $_->[0] } @pairs)
           . ' as made by scripts/lua2c -s (run "make lua")');

        # the C strings are the scripts as sent
        for my $p (@pairs) {
            my ($c) = $made =~ /\Q$p->[1]\E\[\] =\n(.*?)\n;\n/s;
            my $s = join '', map { /^"(.*)"$/ ? $1 : die "bad line $_" }
                             split /\n/, $c // '';
            $s =~ s/\\(["\\])/$1/g;
            $s =~ s/\\n/\n/g;
            $s =~ s/\\t/\t/g;
            ok($s eq sent($p->[0]),
               "$p->[1] is $p->[0] without comments and indentation");
        }
    }

    # Redis compiles each one
    for my $name (sort keys %LUA) {
        like(redis_cmd('SCRIPT', 'LOAD', $LUA{$name}), qr/^[0-9a-f]{40}\z/,
             "cache_$name.lua: Redis loads it");
    }
}

# --- the module sends those texts ------------------------------------------

{
    $ENV{TEST_NGINX_HUNG_PORT} = hung_listener();
    $ENV{TEST_NGINX_APP_PORT} = free_port();

    my ($port, $stop, $prefix) = start_nginx_instance('c059', <<'_EOC_');
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
    aai_cache_key_prefix "c059:";

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;

        location / {
            aai_cache on;
            aai_cache_lock on;
            proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT;
        }

        location /purge/ {
            aai_cache_purge $scheme$request_method$host/vary/;
        }
    }

    # the upstream
    server {
        listen 127.0.0.1:$TEST_NGINX_APP_PORT;

        # answers after 600 ms: the lock holder's lease (1000 ms) is
        # renewed at a third of it
        location /lock/ {
            proxy_read_timeout 600ms;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
            error_page 504 =200 @slow;
        }

        location @slow {
            add_header Cache-Control "max-age=60";
            return 200 "slow\n";
        }

        location /nostore/ {
            add_header Cache-Control "no-store";
            return 200 "nostore\n";
        }

        location /vary/ {
            add_header Cache-Control "max-age=60";
            add_header Vary "X-Lang";
            return 200 "lang=$http_x_lang\n";
        }

        location /big/ {
            add_header Cache-Control "max-age=60";
        }
    }
_EOC_

    # 600 KB: stored in two pieces
    make_path("$prefix/html/big");
    open my $out, '>:raw', "$prefix/html/big/b.bin" or die "b.bin: $!";
    print $out join '', map { chr(($_ * 7) & 0xff) } 1 .. 600 * 1024;
    close $out;

    # the entry key of a GET: P H, H = hex(SHA-256(the cache key))
    my $key = sub { 'c059:' . sha256_hex("httpGETlocalhost$_[0]") };

    redis_flushdb();

    # (MONITOR's lines of the 512 KB pieces exceed a regex's recursion
    # limit in redis_monitor: warned, and not the commands looked at)
    local $SIG{__WARN__} = sub {
        warn @_ unless $_[0] =~ /recursion limit \(\d+\) exceeded/;
    };

    my @c = grep { $_->{client} ne 'lua' && lc $_->{args}[0] eq 'eval' }
            redis_monitor(sub {
        my ($st) = http_get($port, '/lock/a');
        is($st, 200, 'module: the lock holder answered');
        ok(wait_redis_key($key->('/lock/a')), 'module: its entry stored');
        is_deeply(redis_cmd('KEYS', 'c059:*:l'), [],
                  'module: its lock gone with the store');

        ($st) = http_get($port, '/nostore/a');
        is($st, 200, 'module: a response not stored');
        ok(wait_until(5, sub { !@{ redis_cmd('KEYS', 'c059:*:l') } }),
           'module: its lock released');

        ($st) = http_get($port, '/vary/', { 'X-Lang' => 'en' });
        is($st, 200, 'module: a response that varies');
        ok(wait_redis_key($key->('/vary/') . ':v'),
           'module: it is stored, a variant');

        ($st) = http_get($port, '/big/b.bin');
        is($st, 200, 'module: a response of 600 KB');
        ok(wait_redis_key($key->('/big/b.bin')),
           'module: it is stored in pieces');

        ($st) = http_get($port, '/purge/', {}, 'PURGE');
        is($st, 200, 'module: purged');
    });

    my %by = (renew => [], store => [], release => [], pieces => [],
              purge => []);
    for my $cmd (@c) {
        my ($name) = grep { $cmd->{args}[1] eq $LUA{$_} } keys %LUA;
        push @{ $by{$name // 'other'} }, $cmd;
    }

    is(scalar @{ $by{other} // [] }, 0,
       'module: every EVAL is one of the files as sent')
        or diag(explain([ map { substr($_->{args}[1], 0, 60) }
                          @{ $by{other} } ]));
    ok(@{ $by{renew} } >= 1, 'module: cache_renew.lua renews the lease');
    is(scalar @{ $by{store} }, 2,
       'module: cache_store.lua stores the lock holder\'s and the varying '
       . 'entries');
    is(scalar @{ $by{release} }, 1,
       'module: cache_release.lua releases the lock of a response not '
       . 'stored');
    is(scalar @{ $by{pieces} }, 1,
       'module: cache_pieces.lua ends the store in pieces');
    is(scalar @{ $by{purge} }, 1, 'module: cache_purge.lua purges');
    is(redis_cmd('EXISTS', $key->('/vary/'), $key->('/vary/') . ':v'), 0,
       'module: the purged entry is gone');

    $stop->();
}

# --- the scripts against Redis ---------------------------------------------

sub eval_script {
    my ($name, $keys, @argv) = @_;
    return redis_cmd('EVAL', $LUA{$name}, scalar @$keys, @$keys, @argv);
}

# the messages the scripts published meanwhile (MONITOR shows the
# commands a script runs as client "lua")
sub published {
    my $code = shift;
    return map { "$_->{args}[1] $_->{args}[2]" }
           grep { $_->{client} eq 'lua' && lc $_->{args}[0] eq 'publish' }
           redis_monitor($code);
}

sub pttl_in {
    my ($key, $lo, $hi, $name) = @_;
    my $t = redis_cmd('PTTL', $key);
    ok($t >= $lo && $t <= $hi, "$name: $t in [$lo, $hi]");
}

my $CH = 'aai:cache:unlock';

# store: no vary, no lock: the entry alone

{
    redis_flushdb();
    my @p = published(sub {
        is(eval_script('store', ['e', 'b', 'b:v', 'b'],
                       'entry1', 60000, '', '', $CH, '', ''),
           1, 'store: returns 1');
    });
    is(redis_cmd('GET', 'e'), 'entry1', 'store: the entry set');
    pttl_in('e', 59000, 60000, 'store: it lives ARGV[2] ms');
    is(redis_cmd('EXISTS', 'b', 'b:v'), 0,
       'store: no vary record, no set of variants');
    is_deeply(\@p, [], 'store: nothing published without a token');
}

# store: a variant; the vary record keeps a longer life it had

{
    redis_flushdb();
    redis_cmd('SET', 'b', 'old-record', 'PX', 120000);
    is(eval_script('store', ['b:1', 'b', 'b:v', 'b'],
                   'variant1', 60000, 'record', '', $CH, '', ''),
       1, 'store, vary: returns 1');
    is(redis_cmd('GET', 'b:1'), 'variant1', 'store, vary: the variant set');
    is(redis_cmd('GET', 'b'), 'record', 'store, vary: the record set');
    pttl_in('b', 119000, 120000,
            'store, vary: the record keeps its longer life');
    is_deeply(redis_cmd('SMEMBERS', 'b:v'), ['b:1'],
              'store, vary: the variant in the set');
    pttl_in('b:v', 59000, 60000, 'store, vary: the set lives as long');

    eval_script('store', ['b:2', 'b', 'b:v', 'b'],
                'variant2', 300000, 'record', '', $CH, '', '');
    pttl_in('b', 299000, 300000, 'store, vary: a longer variant, the record '
            . 'lives as long');
    pttl_in('b:v', 299000, 300000, 'store, vary: and the set');
    is_deeply([sort @{ redis_cmd('SMEMBERS', 'b:v') }], ['b:1', 'b:2'],
              'store, vary: both variants in the set');

    eval_script('store', ['b:3', 'b', 'b:v', 'b'],
                'variant3', 1000, 'record', '', $CH, '', '');
    pttl_in('b:v', 299000, 300000, 'store, vary: a shorter variant '
            . 'shortens nothing');
}

# store: the lock holder's store lets the lock go and wakes the waiters

{
    redis_flushdb();
    redis_cmd('SET', 'e:l', 'tok1', 'PX', 1000);
    my @p = published(sub {
        is(eval_script('store', ['e', 'e', 'e:v', 'e:l'],
                       'entry', 60000, '', 'tok1', $CH, '1 e:l', ''),
           1, 'store, lock: returns 1');
    });
    is(redis_cmd('EXISTS', 'e:l'), 0, 'store, lock: its lock deleted');
    is_deeply(\@p, ["$CH 1 e:l"], 'store, lock: "1 e:l" published');

    redis_cmd('SET', 'e:l', 'tok2', 'PX', 1000);
    @p = published(sub {
        eval_script('store', ['e', 'e', 'e:v', 'e:l'],
                    'entry', 60000, '', 'tok1', $CH, '1 e:l', '');
    });
    is(redis_cmd('GET', 'e:l'), 'tok2', 'store, lock: another\'s lock kept');
    is_deeply(\@p, ["$CH 1 e:l"], 'store, lock: the waiters told anyway');
}

# store: a header-only entry (a HEAD's) is not stored over the entry of a
# whole response, and replaces anything else

{
    my $entry = sub {                     # the first 8 bytes of an entry
        my ($type, $flags) = @_;
        return "AAIC\x01$type" . pack('n', $flags) . 'rest';
    };
    my $whole = $entry->('E', 0);
    my $head = $entry->('E', 1);

    redis_flushdb();
    redis_cmd('SET', 'e', $whole);
    redis_cmd('SET', 'e:l', 'tok', 'PX', 1000);
    my @p = published(sub {
        is(eval_script('store', ['e', 'e', 'e:v', 'e:l'],
                       $head, 60000, 'record', 'tok', $CH, '1 e:l', '1'),
           0, 'store, header-only over a whole entry: returns 0');
    });
    is(redis_cmd('GET', 'e'), $whole, 'store, header-only: the whole kept');
    is(redis_cmd('EXISTS', 'e:v'), 0, 'store, header-only: no variant set');
    is(redis_cmd('EXISTS', 'e:l'), 0, 'store, header-only: the lock deleted');
    is_deeply(\@p, ["$CH 1 e:l"], 'store, header-only: the waiters told');

    for my $old ([ 'a header-only entry', $entry->('E', 1) ],
                 [ 'a vary record', $entry->('V', 0) ],
                 [ 'another version', "AAIC\x02E\0\0rest" ],
                 [ 'a foreign value', 'something else' ],
                 [ 'a short value', 'AAIC' ])
    {
        redis_cmd('SET', 'e', $old->[1]);
        is(eval_script('store', ['e', 'e', 'e:v', 'e'],
                       $head, 60000, '', '', $CH, '', '1'),
           1, "store, header-only over $old->[0]: returns 1");
        is(redis_cmd('GET', 'e'), $head, "store, header-only: replaces "
           . $old->[0]);
    }

    redis_cmd('DEL', 'e');
    is(eval_script('store', ['e', 'e', 'e:v', 'e'],
                   $head, 60000, '', '', $CH, '', '1'),
       1, 'store, header-only, no entry: returns 1');
    pttl_in('e', 59000, 60000, 'store, header-only: it lives ARGV[2] ms');

    redis_cmd('SET', 'e', $head);
    is(eval_script('store', ['e', 'e', 'e:v', 'e'],
                   $whole, 60000, '', '', $CH, '', ''),
       1, 'store, a whole entry over a header-only one: returns 1');
    is(redis_cmd('GET', 'e'), $whole, 'store, a whole entry replaces it');
}

# pieces: the temporary key becomes the entry when it is whole

{
    redis_flushdb();
    redis_cmd('SET', 'e:w1', 'x' x 1000, 'PX', 60000);
    redis_cmd('SET', 'e:l', 'tok', 'PX', 1000);
    my @p = published(sub {
        is(eval_script('pieces', ['e', 'e', 'e:v', 'e:l', 'e:w1'],
                       1000, 300000, '', 'tok', $CH, '1 e:l'),
           1, 'pieces: returns 1 when whole');
    });
    is(redis_cmd('STRLEN', 'e'), 1000, 'pieces: the entry in place');
    is(redis_cmd('EXISTS', 'e:w1', 'e:l'), 0,
       'pieces: no temporary key, no lock');
    pttl_in('e', 299000, 300000, 'pieces: the entry lives ARGV[2] ms');
    is_deeply(\@p, ["$CH 1 e:l"], 'pieces: "1 e:l" published');

    redis_cmd('SET', 'b:w2', 'y' x 999, 'PX', 60000);
    redis_cmd('SET', 'b:l', 'tok', 'PX', 1000);
    @p = published(sub {
        is(eval_script('pieces', ['b:1', 'b', 'b:v', 'b:l', 'b:w2'],
                       1000, 300000, 'record', 'tok', $CH, '1 b:l'),
           0, 'pieces: returns 0 when a piece is missing');
    });
    is(redis_cmd('EXISTS', 'b:1', 'b', 'b:v', 'b:w2', 'b:l'), 0,
       'pieces: not stored: the temporary key and the lock gone, no record');
    is_deeply(\@p, ["$CH 0 b:l"], 'pieces: "0 b:l" published');

    redis_cmd('SET', 'b:w3', 'z' x 10, 'PX', 60000);
    @p = published(sub {
        is(eval_script('pieces', ['b:1', 'b', 'b:v', 'b', 'b:w3'],
                       10, 60000, 'record', '', $CH, ''),
           1, 'pieces, vary: returns 1');
    });
    is(redis_cmd('GET', 'b:1'), 'z' x 10, 'pieces, vary: the variant');
    is(redis_cmd('GET', 'b'), 'record', 'pieces, vary: the record');
    is_deeply(redis_cmd('SMEMBERS', 'b:v'), ['b:1'],
              'pieces, vary: the set');
    pttl_in('b:v', 59000, 60000, 'pieces, vary: the set\'s life');
    is_deeply(\@p, [], 'pieces: nothing published without a token');
}

# renew: the holder's lock only

{
    redis_flushdb();
    redis_cmd('SET', 'k:l', 'tok', 'PX', 1000);
    is(eval_script('renew', ['k:l'], 'tok', 30000), 1,
       'renew: the holder\'s lock: 1');
    pttl_in('k:l', 29000, 30000, 'renew: it lives ARGV[2] ms more');
    is(eval_script('renew', ['k:l'], 'other', 90000), 0,
       'renew: another token: 0');
    pttl_in('k:l', 1, 30000, 'renew: the lock not renewed');
    is(eval_script('renew', ['gone:l'], 'tok', 30000), 0,
       'renew: no lock: 0');
    is(redis_cmd('EXISTS', 'gone:l'), 0, 'renew: none made');
}

# release: the holder's lock deleted, the waiters told in any case

{
    redis_flushdb();
    redis_cmd('SET', 'k:l', 'tok', 'PX', 1000);
    my @p = published(sub {
        is(eval_script('release', ['k:l'], 'other', $CH, '0 k:l'), 1,
           'release: another token: 1');
    });
    is(redis_cmd('GET', 'k:l'), 'tok', 'release: another\'s lock kept');
    is_deeply(\@p, ["$CH 0 k:l"], 'release: the waiters told');

    @p = published(sub {
        is(eval_script('release', ['k:l'], 'tok', $CH, '0 k:l'), 1,
           'release: the holder: 1');
    });
    is(redis_cmd('EXISTS', 'k:l'), 0, 'release: the lock deleted');
    is_deeply(\@p, ["$CH 0 k:l"], 'release: "0 k:l" published');
}

# purge: each base key with its variants and their set

{
    redis_flushdb();
    redis_cmd('SET', 'a', 'record');
    redis_cmd('SET', "a:$_", "variant $_") for 1 .. 3;
    redis_cmd('SADD', 'a:v', map { "a:$_" } 1 .. 3, 'a:gone');
    redis_cmd('SET', 'b', 'entry');
    redis_cmd('SET', 'c', 'kept');
    redis_cmd('SET', 'c:1', 'kept');

    is(eval_script('purge', ['a', 'b', 'none']), 5,
       'purge: returns the entries and records deleted (3 + 1 + 1)');
    is(redis_cmd('EXISTS', 'a', 'a:1', 'a:2', 'a:3', 'a:v', 'b'), 0,
       'purge: the keys, their variants and the set gone');
    is(redis_cmd('EXISTS', 'c', 'c:1'), 2, 'purge: other keys kept');
    is(eval_script('purge', ['a']), 0, 'purge: nothing left: 0');
}

done_testing();
