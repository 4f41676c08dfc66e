//! Parsing a request head with `httparse` and applying HTTP/1.1 message-framing rules to it
//! (RFC 9112 §6): which body framing applies, and which combinations are refused.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::HttpError;
use crate::limits::Limits;
use crate::request::{BodyKind, Header, Method, Request, Version};

/// The outcome of trying to parse a head from the start of the buffered input.
#[derive(Debug)]
pub(crate) enum HeadParse {
    /// A whole head of `len` bytes.
    Complete {
        request: Request,
        len: usize,
    },
    /// Valid so far, but the head has not ended yet.
    Partial,
    Invalid(HttpError),
}

/// Parses the head at the start of `buffered`, looking at no more than `max_head_bytes`.
pub(crate) fn parse_head(buffered: &[u8], limits: &Limits) -> HeadParse {
    let window = buffered.get(..limits.max_head_bytes).unwrap_or(buffered);
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() >= limits.max_head_bytes => {
            return HeadParse::Invalid(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return HeadParse::Invalid(HttpError::TooManyHeaders)
        }
        Err(_) => return HeadParse::Invalid(HttpError::MalformedHead),
    };
    match build_request(&parsed) {
        Ok(request) => HeadParse::Complete { request, len },
        Err(error) => HeadParse::Invalid(error),
    }
}

fn build_request(parsed: &httparse::Request<'_, '_>) -> Result<Request, HttpError> {
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::MalformedHead);
    };
    let method = Method::from_token(method);
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(HttpError::MalformedHead),
    };
    let (path, query) = split_target(target, &method)?;
    let headers: Vec<Header> = parsed
        .headers
        .iter()
        .map(|header| Header {
            name: String::from(header.name),
            value: trim_whitespace(header.value).to_vec(),
        })
        .collect();

    if version == Version::Http11 && count_named(&headers, "host") != 1 {
        return Err(HttpError::BadHost);
    }
    let body = body_framing(&headers, version)?;
    let expect_continue = match version {
        // An HTTP/1.0 client cannot mean 100-continue (RFC 9110 §10.1.1): ignore Expect.
        Version::Http10 => false,
        Version::Http11 => expects_continue(&headers)?,
    };
    let keep_alive = version == Version::Http11 && !has_token(&headers, "connection", "close");

    Ok(Request {
        method,
        target: String::from(target),
        path,
        query,
        version,
        headers,
        body,
        keep_alive,
        expect_continue,
    })
}

/// Splits a request target into its (still encoded) path and query.
fn split_target(target: &str, method: &Method) -> Result<(String, Option<String>), HttpError> {
    if target == "*" {
        return match method {
            Method::Options => Ok((String::from("*"), None)),
            _ => Err(HttpError::BadRequestTarget),
        };
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        strip_absolute_form(target).ok_or(HttpError::BadRequestTarget)?
    };
    let without_fragment = path_and_query
        .split_once('#')
        .map_or(path_and_query, |(before, _)| before);
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(String::from(query))),
        None => (without_fragment, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((String::from(path), query))
}

/// For `http://authority/path?query`, the `/path?query` part (servers must accept this form).
fn strip_absolute_form(target: &str) -> Option<&str> {
    let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix
            .eq_ignore_ascii_case(scheme)
            .then(|| target.get(scheme.len()..))
            .flatten()
    })?;
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    if authority_end == 0 {
        return None;
    }
    after_scheme.get(authority_end..)
}

fn trim_whitespace(value: &[u8]) -> &[u8] {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or(&[])
}

fn count_named(headers: &[Header], name: &str) -> usize {
    headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case(name))
        .count()
}

/// The comma-separated list elements of every field called `name`, trimmed, empty ones
/// dropped (RFC 9110 §5.6.1).
fn list_elements<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .flat_map(|header| header.value.split(|byte| *byte == b','))
        .map(trim_whitespace)
        .filter(|element| !element.is_empty())
}

fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    list_elements(headers, name).any(|element| element.eq_ignore_ascii_case(token.as_bytes()))
}

fn body_framing(headers: &[Header], version: Version) -> Result<BodyKind, HttpError> {
    let has_transfer_encoding = count_named(headers, "transfer-encoding") > 0;
    let content_length = content_length(headers)?;
    if has_transfer_encoding {
        if content_length.is_some() {
            return Err(HttpError::ContentLengthWithTransferEncoding);
        }
        if version == Version::Http10 {
            return Err(HttpError::InvalidTransferEncoding);
        }
        return transfer_coding(headers);
    }
    Ok(match content_length {
        Some(length) => BodyKind::Length(length),
        None => BodyKind::None,
    })
}

/// The Content-Length, if any. Repeated fields and lists are accepted only when every value
/// is the same (RFC 9110 §8.6).
fn content_length(headers: &[Header]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    let mut any_field = false;
    for header in headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("content-length"))
    {
        any_field = true;
        for element in header
            .value
            .split(|byte| *byte == b',')
            .map(trim_whitespace)
        {
            let value = parse_decimal(element)?;
            match found {
                Some(previous) if previous != value => {
                    return Err(HttpError::ConflictingContentLength)
                }
                _ => found = Some(value),
            }
        }
    }
    if any_field && found.is_none() {
        return Err(HttpError::InvalidContentLength);
    }
    Ok(found)
}

fn parse_decimal(digits: &[u8]) -> Result<u64, HttpError> {
    if digits.is_empty() {
        return Err(HttpError::InvalidContentLength);
    }
    digits.iter().try_fold(0u64, |value, digit| {
        if !digit.is_ascii_digit() {
            return Err(HttpError::InvalidContentLength);
        }
        value
            .checked_mul(10)
            .and_then(|value| value.checked_add(u64::from(digit - b'0')))
            .ok_or(HttpError::InvalidContentLength)
    })
}

/// Only a single `chunked` coding is supported; `chunked` anywhere but last, or twice, is a
/// malformed message (RFC 9112 §6.1), any other coding is not implemented.
fn transfer_coding(headers: &[Header]) -> Result<BodyKind, HttpError> {
    let mut chunked_seen = 0usize;
    let mut other_seen = false;
    for coding in list_elements(headers, "transfer-encoding") {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked_seen += 1;
        } else {
            other_seen = true;
        }
    }
    match (chunked_seen, other_seen) {
        (1, false) => Ok(BodyKind::Chunked),
        (_, true) => Err(HttpError::UnsupportedTransferEncoding),
        _ => Err(HttpError::InvalidTransferEncoding),
    }
}

fn expects_continue(headers: &[Header]) -> Result<bool, HttpError> {
    let mut expect_continue = false;
    for expectation in list_elements(headers, "expect") {
        if expectation.eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
        } else {
            return Err(HttpError::UnsupportedExpectation);
        }
    }
    Ok(expect_continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HeadParse {
        parse_head(text.as_bytes(), &Limits::default())
    }

    fn complete(text: &str) -> Request {
        match parse(text) {
            HeadParse::Complete { request, len } => {
                assert_eq!(len, text.find("\r\n\r\n").unwrap() + 4);
                request
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn invalid(text: &str) -> HttpError {
        match parse(text) {
            HeadParse::Invalid(error) => error,
            other => panic!("expected an invalid head, got {other:?}"),
        }
    }

    #[test]
    fn parses_python_xmlrpc_request_head() {
        let request = complete(
            "POST /RPC2 HTTP/1.1\r\nHost: 10.0.0.1\r\nAccept-Encoding: gzip\r\n\
             Content-Type: text/xml\r\nUser-Agent: Python-xmlrpc/3.11\r\n\
             Content-Length: 123\r\n\r\n",
        );
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/RPC2");
        assert_eq!(request.query, None);
        assert_eq!(request.version, Version::Http11);
        assert_eq!(request.body, BodyKind::Length(123));
        assert!(request.keep_alive);
        assert!(!request.expect_continue);
        assert_eq!(request.header_str("content-type"), Some("text/xml"));
        assert_eq!(request.headers.len(), 5);
    }

    #[test]
    fn splits_path_and_query_and_drops_fragment() {
        let request = complete(
            "PUT /import_raw_vdi?vdi=OpaqueRef%3Ax&format=raw#frag HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert_eq!(request.path, "/import_raw_vdi");
        assert_eq!(
            request.query.as_deref(),
            Some("vdi=OpaqueRef%3Ax&format=raw")
        );
        assert_eq!(
            request.query_param("vdi").unwrap().as_deref(),
            Some("OpaqueRef:x")
        );
        assert_eq!(request.body, BodyKind::None);
    }

    #[test]
    fn accepts_absolute_form_and_options_star() {
        let request =
            complete("GET http://host:80/export_raw_vdi?x=1 HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!(request.path, "/export_raw_vdi");
        assert_eq!(request.query.as_deref(), Some("x=1"));
        let request = complete("GET HTTPS://host HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!(request.path, "/");
        let request = complete("OPTIONS * HTTP/1.1\r\nHost: host\r\n\r\n");
        assert_eq!(request.path, "*");
        assert_eq!(
            invalid("GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
            HttpError::BadRequestTarget
        );
        assert_eq!(
            invalid("GET host:80 HTTP/1.1\r\nHost: h\r\n\r\n"),
            HttpError::BadRequestTarget
        );
        assert_eq!(
            invalid("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"),
            HttpError::BadRequestTarget
        );
    }

    #[test]
    fn header_values_are_trimmed() {
        let request = complete("GET / HTTP/1.1\r\nHost:   h  \r\nX-A: \t v \t\r\n\r\n");
        assert_eq!(request.header("x-a"), Some(&b"v"[..]));
        assert_eq!(request.header("HOST"), Some(&b"h"[..]));
    }

    #[test]
    fn http10_never_keeps_alive_and_ignores_expect() {
        let request =
            complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(request.version, Version::Http10);
        assert!(!request.keep_alive);
        assert!(!request.expect_continue);
    }

    #[test]
    fn connection_close_token_is_found_in_lists() {
        let request = complete("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n");
        assert!(!request.keep_alive);
    }

    #[test]
    fn http11_requires_exactly_one_host() {
        assert_eq!(invalid("GET / HTTP/1.1\r\n\r\n"), HttpError::BadHost);
        assert_eq!(
            invalid("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HttpError::BadHost
        );
    }

    #[test]
    fn content_length_rules() {
        let ok = complete(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n",
        );
        assert_eq!(ok.body, BodyKind::Length(5));
        let cases = [
            (
                "Content-Length: 5\r\nContent-Length: 6",
                HttpError::ConflictingContentLength,
            ),
            ("Content-Length: 5, 6", HttpError::ConflictingContentLength),
            ("Content-Length: -1", HttpError::InvalidContentLength),
            ("Content-Length: +1", HttpError::InvalidContentLength),
            ("Content-Length: 1 2", HttpError::InvalidContentLength),
            ("Content-Length: ", HttpError::InvalidContentLength),
            ("Content-Length: 0x10", HttpError::InvalidContentLength),
            (
                "Content-Length: 18446744073709551616",
                HttpError::InvalidContentLength,
            ),
            (
                "Content-Length: 99999999999999999999999",
                HttpError::InvalidContentLength,
            ),
        ];
        for (field, expected) in cases {
            let text = alloc::format!("POST / HTTP/1.1\r\nHost: h\r\n{field}\r\n\r\n");
            assert_eq!(invalid(&text), expected, "{field}");
        }
        let max =
            complete("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(max.body, BodyKind::Length(u64::MAX));
    }

    #[test]
    fn transfer_encoding_rules() {
        let ok = complete("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(ok.body, BodyKind::Chunked);
        let cases = [
            (
                "HTTP/1.1",
                "Transfer-Encoding: chunked\r\nContent-Length: 3",
                HttpError::ContentLengthWithTransferEncoding,
            ),
            (
                "HTTP/1.1",
                "Transfer-Encoding: gzip, chunked",
                HttpError::UnsupportedTransferEncoding,
            ),
            (
                "HTTP/1.1",
                "Transfer-Encoding: identity",
                HttpError::UnsupportedTransferEncoding,
            ),
            (
                "HTTP/1.1",
                "Transfer-Encoding: chunked, chunked",
                HttpError::InvalidTransferEncoding,
            ),
            (
                "HTTP/1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                HttpError::InvalidTransferEncoding,
            ),
            (
                "HTTP/1.1",
                "Transfer-Encoding: ,",
                HttpError::InvalidTransferEncoding,
            ),
            (
                "HTTP/1.0",
                "Transfer-Encoding: chunked",
                HttpError::InvalidTransferEncoding,
            ),
        ];
        for (version, field, expected) in cases {
            let text = alloc::format!("POST / {version}\r\nHost: h\r\n{field}\r\n\r\n");
            assert_eq!(invalid(&text), expected, "{field}");
        }
    }

    #[test]
    fn expectations() {
        let request = complete("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n\r\n");
        assert!(request.expect_continue);
        assert_eq!(
            invalid("PUT / HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n"),
            HttpError::UnsupportedExpectation
        );
    }

    #[test]
    fn malformed_heads() {
        for text in [
            "GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
            "GET\x01 / HTTP/1.1\r\nHost: h\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        ] {
            assert_eq!(invalid(text), HttpError::MalformedHead, "{text:?}");
        }
    }

    #[test]
    fn partial_then_too_large() {
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: h\r\n"),
            HeadParse::Partial
        ));
        let limits = Limits {
            max_head_bytes: 32,
            ..Limits::default()
        };
        let long = "GET / HTTP/1.1\r\nHost: hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\r\n\r\n";
        assert!(matches!(
            parse_head(long.as_bytes(), &limits),
            HeadParse::Invalid(HttpError::HeadTooLarge)
        ));
        assert!(matches!(
            parse_head(&long.as_bytes()[..20], &limits),
            HeadParse::Partial
        ));
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let text = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_head(text.as_bytes(), &limits),
            HeadParse::Invalid(HttpError::TooManyHeaders)
        ));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let text = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        match parse(text) {
            HeadParse::Complete { request, len } => {
                assert_eq!(len, text.len());
                assert_eq!(request.path, "/");
            }
            other => panic!("{other:?}"),
        }
    }
}
