/**
 * Golden data from nix-formats.md: real output of Nix 2.8.0 (`nix-store --dump`,
 * `nix copy --to file://…?write-nar-listing=1&secret-key=…`).
 */

/** `nix-store --dump` of a file containing "hello\n" (§1.7). */
export const HELLO_NAR_HEX =
  '0d00000000000000' + '6e69782d61726368' + '6976652d31000000' +
  '0100000000000000' + '2800000000000000' +
  '0400000000000000' + '7479706500000000' +
  '0700000000000000' + '726567756c617200' +
  '0800000000000000' + '636f6e74656e7473' +
  '0600000000000000' + '68656c6c6f0a0000' +
  '0100000000000000' + '2900000000000000';
export const HELLO_NAR_HASH_NIX32 = '04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw';
export const HELLO_NAR_HASH_HEX = '1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13';

/** The `tree` directory of §1.7 / §2.9. */
export const TREE_NAR_SIZE = 1088;
export const TREE_NAR_HASH_HEX = '8bd3a6a8458ca3bbe958fa643c57be2fb6dd3c1905b74fc537db049b32d5789c';
export const TREE_NAR_HASH_NIX32 = '173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb';
export const TREE_LS =
  '{"version":1,"root":{"type":"directory","entries":{"empty":{"type":"regular","size":0,"narOffset":232},"hello.txt":{"type":"regular","size":6,"narOffset":424},"link":{"type":"symlink","target":"hello.txt"},"sub":{"type":"directory","entries":{"run.sh":{"type":"regular","size":18,"executable":true,"narOffset":984}}}}}}';
export const REF_LS = '{"version":1,"root":{"type":"regular","size":63,"narOffset":96}}';

export const TEST_CACHE_PUBLIC_KEY = 'test-cache-1:5vMfnT/UI8L+fTADX51o6+4wc2jA8rkPvLKZ7tD0QPE=';

export const TREE_NARINFO = `StorePath: /nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree
URL: nar/0hgl9shs8wv90ggh4p4xqk6yb6rbbbzvhs1yy25j4s3f0vhcx1v9.nar.xz
Compression: xz
FileHash: sha256:0hgl9shs8wv90ggh4p4xqk6yb6rbbbzvhs1yy25j4s3f0vhcx1v9
FileSize: 268
NarHash: sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb
NarSize: 1088
References: 
Sig: test-cache-1:mH4qYK5XJRKyQovXTsWgOBGCAuGqsx7eNC7RpSjNZm8yfLHWWyjgPFhcJCevYHPifx1bxoGLYrGFWmQ9XpWAAw==
CA: fixed:r:sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb
`;

export const REF_NARINFO = `StorePath: /nix/store/h03k8arrvrzapcax6dwdh33dxc160650-ref.txt
URL: nar/1gf69mfsq8qwp1pymdj79xzmnyg14l7h58mwxwxhljrf12hd0gnk.nar.xz
Compression: xz
FileHash: sha256:1gf69mfsq8qwp1pymdj79xzmnyg14l7h58mwxwxhljrf12hd0gnk
FileSize: 184
NarHash: sha256:1p76ikbns7wh9677l52gbzhw68j4b9x1n16ygz6c7qcdfqpzcq4n
NarSize: 176
References: d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree
Sig: test-cache-1:9UYY3hI5r+x/y4DrKxK78FguyrYucW0CBEnL/7EEJzr1y6IHClsfcwoY/D86GsdODzWFmbVXdK/TqaUUudlNAQ==
CA: text:sha256:1dh6gv19lkgs611jrxfd43pcindgh1622ga44q5vlhf0wvrycyv9
`;

export const TREE_FINGERPRINT =
  '1;/nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree;sha256:173qslr9n16v6z2lzdq534ydvdigprbkqr7sb3lvp8wc8nladlwb;1088;';
export const REF_FINGERPRINT =
  '1;/nix/store/h03k8arrvrzapcax6dwdh33dxc160650-ref.txt;sha256:1p76ikbns7wh9677l52gbzhw68j4b9x1n16ygz6c7qcdfqpzcq4n;176;/nix/store/d3h4nm3v0qi2h0g02l6whnb6h468n3is-tree';
/** base16 of REF's NarHash, from `nix-store --dump-db` (§5.5). */
export const REF_NAR_HASH_HEX = '9660f62f768de1c3cc7fde041b7a5a4422c3e15f4f147a8e49901f6dd78ce6dc';
