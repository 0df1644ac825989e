#!/usr/bin/perl
# Writes the seed corpus of jwt_fuzz.c into the directory given: valid
# tokens of every algorithm (mode 0 and 1), header and payload JSON pairs
# that the target signs itself (mode 2), raw segments with signatures
# (mode 3), and known-bad shapes.  Signed with the test keys in t/jwt.

use strict;
use warnings;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use AaiJwt;

my $dir = shift // 'corpus/jwt';
mkdir $dir;

my %kid = (HS256 => 'h1', RS256 => 'r1', ES256 => 'e1');
my %claims = (sub => 'alice', iss => 'https://idp', aud => ['web', 'api'],
              tenant => 'acme', roles => ['a', { b => 1 }], n => 1.5,
              exp => 4102444800, nbf => 1000000000, iat => 1000000000);
my $n = 0;

sub seed {
    my ($mode, $data) = @_;
    open my $f, '>', sprintf('%s/seed-%02d', $dir, $n++) or die $!;
    binmode $f;
    print $f chr($mode), $data;
    close $f;
}

for my $alg (qw( HS256 HS384 HS512 RS256 RS384 ES256 ES384 )) {
    my $t = jwt(alg => $alg, header => { kid => $kid{$alg} },
                claims => \%claims);
    seed(0, $t);
    seed(1, $t);
    my @s = split /\./, $t;
    seed(3, join "\n", map { decode($_) } @s);
}

seed(2, qq({"alg":"HS256","kid":"h1"}\n)
        . qq({"sub":"bob","exp":4102444800,"n":7,"roles":["x"]}));
seed(2, qq({"alg":"HS256"}\n{"sub":"bob","iss":"https://idp","aud":"api"}));
seed(2, qq({"alg":"HS256"}\n{"sub":"a","sub":"b"}));
seed(2, qq({"alg":"HS256"}\n{"sub":1,"exp":"x"}));
seed(2, qq({"alg":"HS256"}\n{"sub":"a","tenant":{"deep":[1,2,{"x":null}]}}));
seed(0, b64url('{"alg":"none"}') . '.' . b64url('{"sub":"x"}') . '.');
seed(0, 'eyJhbGciOiJIUzI1NiJ9.e30.');
seed(0, 'a.b.c');
seed(0, '...');

sub decode {
    my ($s) = @_;
    $s =~ tr{-_}{+/};
    $s .= '=' x ((4 - length($s) % 4) % 4);
    require MIME::Base64;
    return MIME::Base64::decode_base64($s);
}
