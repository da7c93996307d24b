import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Answers a request the HTTP parser refuses before it reaches the router (a
/// Content-Length too large for any integer, a malformed head) with the
/// OpenStack `badRequest` fault, then closes the connection. Hummingbird's own
/// answer there is a 400 without a body; every other 4xx of the API is a fault.
/// A parse error inside a request that is being served (a body shorter than its
/// Content-Length) goes on to the handler, which answers it (`CycladesAPI.serve`).
final class FramingFaultHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Requests whose head arrived and whose response has not ended.
    private var inProgress = 0
    private let api: CycladesAPI

    init(api: CycladesAPI) {
        self.api = api
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) { inProgress += 1 }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { inProgress -= 1 }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let e = error as? HTTPParserError, inProgress == 0 else {
            context.fireErrorCaught(error)
            return
        }
        let message = switch e {
        case .invalidContentLength: "the request's Content-Length is not a valid length"
        default: "the request is not valid HTTP/1.1: \(e)"
        }
        let reply = CycladesAPI.fault("badRequest", 400, message, close: true)
        let body = reply.body ?? Data()
        var fields = HTTPFields()
        fields[.contentType] = "application/json"
        fields[.contentLength] = String(body.count)
        fields[.connection] = "close"
        context.write(wrapOutboundOut(.head(HTTPResponse(status: .badRequest, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(bytes: body))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
        api.log("- (unparsable request) 400: \(message)")
    }
}

extension CycladesAPI {
    /// The HTTP/1.1 server the API runs on: Hummingbird's, with parse errors
    /// answered as OpenStack faults.
    public var httpServer: HTTPServerBuilder {
        .http1(configuration: .init(additionalChannelHandlers: [FramingFaultHandler(api: self)]))
    }
}
