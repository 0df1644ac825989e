package AaiJwt;

# JSON Web Tokens for the aai_jwt tests, signed at test time: HMAC with
# Digest::SHA, RSA and ECDSA with the openssl command and the test keys in
# t/jwt/ (test keys only, never use them anywhere else).  Core Perl and
# Debian's perl modules only.
#
#     use lib 't/lib';
#     use AaiJwt;
#
#   jwt(%o)          a signed compact JWS.  o: alg (default HS256), key (an
#                    HMAC secret, or a key file name in t/jwt/ or a path;
#                    default: $AaiJwt::Secret / rsa.key / ec256.key /
#                    ec384.key by alg), claims (hash, merged over
#                    sub => "alice", iat => now, exp => now + 300; a
#                    claim set to undef is left out), header (hash, merged
#                    over alg and typ; undef leaves a member out),
#                    raw_header / raw_payload (JSON bytes used as is),
#                    sign_alg (sign with this alg whatever the header says).
#   b64url($bytes)   base64url without padding.
#   jwt_dir()        absolute path of t/jwt.
#   $AaiJwt::Secret  the HMAC secret the tests configure.

use strict;
use warnings;

use Exporter ();
use JSON::PP ();
use MIME::Base64 ();
use Digest::SHA ();
use File::Temp ();
use File::Basename ();
use Cwd ();

our @ISA = qw( Exporter );
our @EXPORT = qw( jwt b64url jwt_dir );

our $Secret = 'aai-test-secret-0123456789abcdef'
             . '0123456789abcdef0123456789abcdef';

my $dir = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../jwt');

my %default_key = (
    RS => 'rsa.key',
    ES256 => 'ec256.key',
    ES384 => 'ec384.key',
);


sub jwt_dir {
    return $dir;
}


sub b64url {
    my ($s) = @_;

    $s = MIME::Base64::encode_base64($s, '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+\z//;

    return $s;
}


sub jwt {
    my (%o) = @_;

    my $alg = $o{alg} // 'HS256';
    my $json = JSON::PP->new->canonical->utf8;
    my $now = time;

    my %h = (alg => $alg, typ => 'JWT', %{ $o{header} // {} });
    my %c = (sub => 'alice', iat => $now, exp => $now + 300,
             %{ $o{claims} // {} });

    for my $m (\%h, \%c) {
        delete $m->{$_} for grep { !defined $m->{$_} } keys %$m;
    }

    my $input = b64url($o{raw_header} // $json->encode(\%h)) . '.'
                . b64url($o{raw_payload} // $json->encode(\%c));

    my $sig = sign($o{sign_alg} // $alg, $o{key}, $input);

    return $input . '.' . b64url($sig);
}


sub sign {
    my ($alg, $key, $input) = @_;

    my ($family, $bits) = $alg =~ /\A([HRE]S)(256|384|512)\z/
        or return '';

    if ($family eq 'HS') {
        no strict 'refs';
        return &{"Digest::SHA::hmac_sha$bits"}($input, $key // $Secret);
    }

    $key //= $default_key{$family} // $default_key{$alg};
    my $path = $key =~ m{/} ? $key : "$dir/$key";

    my $tmp = File::Temp->new;
    binmode $tmp;
    print $tmp $input;
    close $tmp;

    open my $fh, '-|', 'openssl', 'dgst', "-sha$bits", '-sign', $path,
        $tmp->filename
        or die "openssl: $!";
    binmode $fh;
    local $/;
    my $sig = <$fh>;
    close $fh or die "openssl dgst -sign $path failed";

    return $family eq 'ES' ? der_to_raw($sig, $bits == 256 ? 32 : 48) : $sig;
}


# ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) to JWS R || S

sub der_to_raw {
    my ($der, $n) = @_;

    my @b = unpack 'C*', $der;
    my $i = 0;

    die "not a DER sequence" unless $b[$i++] == 0x30;
    $i += ($b[$i] & 0x80) ? 1 + ($b[$i] & 0x7f) : 1;

    my $raw = '';

    for (1 .. 2) {
        die "not a DER integer" unless $b[$i++] == 0x02;
        my $len = $b[$i++];
        my $v = pack 'C*', @b[$i .. $i + $len - 1];
        $i += $len;
        $v =~ s/\A\x00+//;
        $raw .= ("\x00" x ($n - length $v)) . $v;
    }

    return $raw;
}


1;
