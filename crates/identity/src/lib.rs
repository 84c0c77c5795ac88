//! Sender identity checks: SPF, DKIM, DMARC, rDNS, HELO, MX, MTA-STS, blocklists, SPF flattening
