//! Media for providers that cannot fetch a URL themselves: data URIs decoded, `https://` URLs
//! downloaded with a size limit and a guard that refuses private, loopback and link-local
//! addresses (unless configured), checked on every redirect hop and pinned for the connection
//! so DNS cannot be switched under the check.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{ErrorKind, GatewayError};

/// How media is fetched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaSettings {
    /// Largest download.
    pub max_bytes: usize,
    /// Allow URLs that resolve to private, loopback or link-local addresses.
    pub allow_private_networks: bool,
    pub timeout: Duration,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            max_bytes: 20 * 1024 * 1024,
            allow_private_networks: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Bytes with their MIME type.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaData {
    pub mime: String,
    pub data: Bytes,
}

impl MediaData {
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }
}

/// `data:<mime>;base64,<data>` → (mime, base64 text). `None` if not a base64 data URI.
pub fn parse_data_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let mime = mime.split(';').next().unwrap_or(mime);
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// Decodes a base64 data URI.
pub fn decode_data_uri(uri: &str) -> Result<MediaData, GatewayError> {
    let (mime, data) = parse_data_uri(uri).ok_or_else(|| {
        GatewayError::invalid("a data URI must look like `data:<mime>;base64,<data>`")
    })?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| GatewayError::invalid(format!("the data URI is not valid base64: {e}")))?;
    Ok(MediaData {
        mime: mime.to_string(),
        data: Bytes::from(data),
    })
}

/// Whether an address is one the guard refuses by default.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT; 0.0.0.0/8
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 64:ff9b:1::/48, NAT64 for local use: translates to anything behind it
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // 100::/64 discard, 2001:db8::/32 documentation
                || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0)
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach an IPv4 host:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed
/// by some stacks), NAT64 (`64:ff9b::/96`), 6to4 (`2002:AABB:CCDD::/48`) and Teredo
/// (`2001:0::/32`, the client address inverted in the last 32 bits).
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // `::` and `::1` are themselves (unspecified, loopback).
    if s[..6].iter().all(|&x| x == 0) && !(s[6] == 0 && s[7] <= 1) {
        return Some(last);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return Some(last);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    None
}

/// Downloads media for adapters.
#[derive(Debug, Clone)]
pub struct MediaFetcher {
    settings: MediaSettings,
}

const MAX_REDIRECTS: usize = 5;

impl MediaFetcher {
    pub fn new(settings: MediaSettings) -> Self {
        MediaFetcher { settings }
    }

    /// A data URI is decoded; an `http(s)` URL is downloaded under the guard.
    pub async fn load(&self, url: &str) -> Result<MediaData, GatewayError> {
        if url.starts_with("data:") {
            let media = decode_data_uri(url)?;
            if media.data.len() > self.settings.max_bytes {
                return Err(self.too_large());
            }
            return Ok(media);
        }
        self.fetch(url).await
    }

    fn too_large(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "a media file is larger than the limit of {} bytes",
                self.settings.max_bytes
            ),
        )
        .with_code("media_too_large")
    }

    /// Resolves the URL's host and checks every address.
    async fn checked_address(&self, url: &reqwest::Url) -> Result<SocketAddr, GatewayError> {
        let host = url
            .host_str()
            .ok_or_else(|| GatewayError::invalid(format!("`{url}` has no host")))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host_for_lookup, port))
            .await
            .map_err(|e| GatewayError::invalid(format!("cannot resolve `{host}`: {e}")))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| GatewayError::invalid(format!("`{host}` has no address")))?;
        if !self.settings.allow_private_networks && addrs.iter().any(|a| is_private(a.ip())) {
            return Err(GatewayError::invalid(format!(
                "refusing to fetch `{url}`: it resolves to a private, loopback or link-local \
                 address (set `media.allow_private_networks` to allow it)"
            ))
            .with_code("media_url_refused"));
        }
        Ok(first)
    }

    async fn fetch(&self, url: &str) -> Result<MediaData, GatewayError> {
        let mut url = reqwest::Url::parse(url)
            .map_err(|e| GatewayError::invalid(format!("`{url}` is not a URL: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            if url.scheme() != "https" && url.scheme() != "http" {
                return Err(GatewayError::invalid(format!(
                    "media URLs must be http(s), got `{}`",
                    url.scheme()
                )));
            }
            let addr = self.checked_address(&url).await?;
            let host = url.host_str().unwrap_or_default().to_string();
            // Pin the checked address for this connection.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, addr)
                .timeout(self.settings.timeout)
                .build()
                .map_err(|e| GatewayError::internal(format!("media client: {e}")))?;
            let response = client.get(url.clone()).send().await.map_err(|e| {
                GatewayError::invalid(format!("cannot download `{url}`: {}", e.without_url()))
                    .with_code("media_fetch_failed")
            })?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| GatewayError::invalid(format!("`{url}` redirects nowhere")))?;
                url = url.join(location).map_err(|e| {
                    GatewayError::invalid(format!("`{url}` redirects to a bad URL: {e}"))
                })?;
                continue;
            }
            if !response.status().is_success() {
                return Err(GatewayError::invalid(format!(
                    "cannot download `{url}`: it answered {}",
                    response.status()
                ))
                .with_code("media_fetch_failed"));
            }
            if response
                .content_length()
                .is_some_and(|len| len as usize > self.settings.max_bytes)
            {
                return Err(self.too_large());
            }
            let mime = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| guess_mime(url.path()).to_string());
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    GatewayError::invalid(format!("download of `{url}` broke: {}", e.without_url()))
                })?;
                if body.len() + chunk.len() > self.settings.max_bytes {
                    return Err(self.too_large());
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(MediaData {
                mime,
                data: Bytes::from(body),
            });
        }
        Err(GatewayError::invalid(format!(
            "`{url}` redirects more than {MAX_REDIRECTS} times"
        )))
    }
}

/// A MIME type from a file extension, for servers that send none.
pub fn guess_mime(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris_decode() {
        let m = decode_data_uri("data:image/png;base64,aGVsbG8=").unwrap();
        assert_eq!(m.mime, "image/png");
        assert_eq!(&m.data[..], b"hello");
        assert_eq!(m.base64(), "aGVsbG8=");
        assert!(decode_data_uri("data:image/png,hello").is_err());
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            // IPv4-compatible, NAT64, 6to4 and Teredo forms of private IPv4 addresses.
            "::127.0.0.1",
            "::10.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:0101:1::5",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "fec0::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[actix_rt::test]
    async fn loopback_urls_are_refused_unless_allowed() {
        let fetcher = MediaFetcher::new(MediaSettings::default());
        let err = fetcher
            .load("http://127.0.0.1:9/image.png")
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("media_url_refused"));
        let err = fetcher
            .load("http://localhost:9/image.png")
            .await
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("media_url_refused"));
        let err = fetcher.load("file:///etc/passwd").await.unwrap_err();
        assert!(err.message.contains("http(s)"), "{}", err.message);
    }
}
