#!/bin/sh
# Regenerates the test certificates of `auth` (run it from this directory; needs openssl).
# Only certificates are kept: verification needs no private keys, and the TLS handshake that
# proves possession of the key is not part of these unit tests. Validity 2000-2100, so the
# fixtures neither expire nor start in the future on a machine with a skewed clock.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sign() { # out csr issuer-name extensions-section [selfsign]
  : >"$tmp/index.txt"
  cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = ca
[ca]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = optional
organizationName = optional
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
CNF
  openssl rand -hex 8 >"$tmp/serial"
  openssl ca -batch -config "$tmp/ca.cnf" -in "$2" -out "$tmp/out.pem" -notext \
    -startdate 20000101000000Z -enddate 21000101000000Z -extensions "$4" \
    -cert "$3.pem" -keyfile "$tmp/$3.key" ${5:-} 2>/dev/null
  openssl x509 -in "$tmp/out.pem" -out "$1.pem"
}

csr() { # name subject
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$tmp/$1.key" -out "$tmp/$1.csr" 2>/dev/null
}

ca() { # name cn
  csr "$1" "/CN=$2"
  # A placeholder so `sign` finds the issuer certificate; -selfsign ignores it.
  openssl req -x509 -key "$tmp/$1.key" -subj "/CN=$2" -days 1 -out "$1.pem" 2>/dev/null
  sign "$1" "$tmp/$1.csr" "$1" ca_ext -selfsign
}

leaf() { # name subject issuer
  csr "$1" "$2"
  sign "$1" "$tmp/$1.csr" "$3" client_ext
}

ca front-proxy-ca front-proxy-ca
ca client-ca kubernetes
ca rogue-ca rogue
leaf front-proxy-client "/CN=front-proxy-client" front-proxy-ca
leaf other-proxy "/CN=other-proxy" front-proxy-ca
leaf alice "/O=dev/O=ops/CN=alice" client-ca
leaf no-cn "/O=dev" client-ca
leaf mallory "/CN=front-proxy-client" rogue-ca
