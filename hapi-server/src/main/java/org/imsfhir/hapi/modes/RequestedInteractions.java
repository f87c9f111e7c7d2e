package org.imsfhir.hapi.modes;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.parser.DataFormatException;
import ca.uhn.fhir.rest.api.Constants;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.InvalidRequestException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;

/**
 * What one HTTP request asks the server to do, as a list of {@link Interaction}s: one for a
 * plain REST call, one per entry for a transaction or batch Bundle.
 *
 * <p>Terms: an interaction has the resource type it touches ({@code *} for system-level
 * operations), the SMART interaction letter ({@code c r u d s}, or {@code o} for an operation
 * such as {@code $expunge}) and whether it is <em>conditional</em> (a create with
 * {@code If-None-Exist}, an update or delete addressed by a search, which also searches).
 */
final class RequestedInteractions {

	/** One interaction: type, letter, conditional. */
	record Interaction(String resourceType, char letter, boolean conditional, String method) {}

	private RequestedInteractions() {}

	static List<Interaction> of(RequestDetails request, RestOperationTypeEnum operation) {
		String type = request.getResourceName();
		List<Interaction> out = new ArrayList<>();
		switch (operation) {
			case READ, VREAD, HISTORY_INSTANCE -> out.add(new Interaction(type, 'r', false, "GET"));
			case SEARCH_TYPE, HISTORY_TYPE -> out.add(new Interaction(type, 's', false, "GET"));
			case CREATE -> out.add(new Interaction(
					type, 'c', notBlank(request.getHeader(Constants.HEADER_IF_NONE_EXIST)), "POST"));
			case UPDATE -> out.add(new Interaction(
					type, 'u', request.getConditionalUrl(RestOperationTypeEnum.UPDATE) != null, "PUT"));
			case PATCH -> out.add(new Interaction(type, 'u', false, "PATCH"));
			case DELETE -> out.add(new Interaction(
					type, 'd', request.getConditionalUrl(RestOperationTypeEnum.DELETE) != null, "DELETE"));
			case SEARCH_SYSTEM, HISTORY_SYSTEM, GET_PAGE -> out.add(new Interaction("*", 's', false, "GET"));
			case TRANSACTION, BATCH -> out.addAll(entries(request));
			default -> out.add(new Interaction(type == null ? "*" : type, 'o', false, request.getRequestType().name()));
		}
		return out;
	}

	/** The interactions of the entries of a transaction/batch Bundle in the request body. */
	static List<Interaction> entries(RequestDetails request) {
		Bundle bundle = bundle(request);
		List<Interaction> out = new ArrayList<>();
		if (bundle == null) {
			return out;
		}
		for (Bundle.BundleEntryComponent entry : bundle.getEntry()) {
			Bundle.BundleEntryRequestComponent req = entry.getRequest();
			String url = req.getUrl() == null ? "" : req.getUrl();
			int cut = indexOfAny(url, "/?");
			String type = cut < 0 ? url : url.substring(0, cut);
			boolean query = url.contains("?");
			boolean hasId = cut >= 0 && url.charAt(cut) == '/' && url.length() > cut + 1;
			String method = req.getMethod() == null ? "" : req.getMethod().toCode();
			switch (method) {
				case "POST" -> out.add(new Interaction(type, 'c', notBlank(req.getIfNoneExist()), method));
				case "PUT" -> out.add(new Interaction(type, 'u', query, method));
				case "PATCH" -> out.add(new Interaction(type, 'u', query, method));
				case "DELETE" -> out.add(new Interaction(type, 'd', query, method));
				case "GET", "HEAD" -> out.add(new Interaction(type, hasId && !query ? 'r' : 's', false, method));
				default -> { /* HAPI itself refuses an entry without a method */ }
			}
		}
		return out;
	}

	private static Bundle bundle(RequestDetails request) {
		byte[] body = request.loadRequestContents();
		if (body == null || body.length == 0) {
			return null;
		}
		FhirContext context = request.getFhirContext();
		String contentType = request.getHeader(Constants.HEADER_CONTENT_TYPE);
		EncodingEnum encoding = contentType == null ? null : EncodingEnum.forContentType(contentType);
		if (encoding == null) {
			encoding = EncodingEnum.JSON;
		}
		try {
			IBaseResource parsed = encoding.newParser(context).parseResource(new String(body, StandardCharsets.UTF_8));
			return parsed instanceof Bundle bundle ? bundle : null;
		} catch (DataFormatException e) {
			throw new InvalidRequestException("the request body is not a readable Bundle: " + e.getMessage());
		}
	}

	private static int indexOfAny(String text, String chars) {
		for (int i = 0; i < text.length(); i++) {
			if (chars.indexOf(text.charAt(i)) >= 0) {
				return i;
			}
		}
		return -1;
	}

	private static boolean notBlank(String text) {
		return text != null && !text.isBlank();
	}
}
